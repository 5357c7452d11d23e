"""Which (query, key) pairs take part in the softmax: sequence bounds, the causal rule and an
optional boolean mask, in one place for the forward and both backward kernels."""

import triton
import triton.language as tl


@triton.jit
def visible(offs_m, offs_n, seqlen_q, seqlen_k, p_mask, stride_mask_m, stride_mask_n,
            IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool: key offs_n exists, is not in query offs_m's future (top-left
    causal rule) and the mask (uint8, nonzero = attend; p_mask at this (batch, head)) allows it.
    """
    m_visible = offs_n[None, :] < seqlen_k
    if IS_CAUSAL:
        m_visible = m_visible & (offs_n[None, :] <= offs_m[:, None])
    if HAS_MASK:
        m_in = (offs_m[:, None] < seqlen_q) & m_visible
        p_tile = p_mask + offs_m[:, None] * stride_mask_m + offs_n[None, :] * stride_mask_n
        b_mask = tl.load(p_tile, mask=m_in, other=0)
        m_visible = m_visible & (b_mask != 0)
    return m_visible
