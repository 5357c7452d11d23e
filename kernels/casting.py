"""Down-casts from float32 that round to nearest even on the GPU and under the interpreter alike.

A GPU's float32 -> bfloat16 conversion rounds to nearest even; Triton 3.9's interpreter
truncates (whatever rounding mode the cast names), so without this the CPU tests would check
numbers one ulp away from what users get. Under the interpreter with bfloat16 inputs
(``INTERPRET_BF16``) the dots also run on float32 copies (its bfloat16 dots are wrong), so
a dot operand is rounded to bfloat16 values and kept in float32, as the GPU's operand would be.
"""

import triton
import triton.language as tl


@triton.jit
def _bf16_rtne_by_hand(x):
    """float32 -> bfloat16 rounded to nearest even through the bits, exact under any cast."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True)).to(tl.bfloat16)


@triton.jit
def downcast(x, dtype: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """float32 ``x`` in ``dtype`` (a stored result), rounded to nearest even (a float32
    destination, as split partial results, keeps it as is)."""
    if dtype == tl.float32:
        return x
    if INTERPRET_BF16:
        return _bf16_rtne_by_hand(x)
    return x.to(dtype, fp_downcast_rounding="rtne")


@triton.jit
def dot_operand(x, like, INTERPRET_BF16: tl.constexpr):
    """float32 ``x`` as a dot operand beside ``like`` (a tile loaded from the inputs): in the
    inputs' precision, rounded to nearest even."""
    if INTERPRET_BF16:  # ``like`` is a float32 copy of bfloat16 data
        return _bf16_rtne_by_hand(x).to(tl.float32)
    return x.to(like.dtype, fp_downcast_rounding="rtne")
