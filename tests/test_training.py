"""A tiny GPT built from attention_ops.MultiHeadAttention trains the same on the fused and the
eager backend, and compiles with torch.compile(fullgraph=True)."""

import torch
from seeding import generator
from torch import nn

import attention_ops as ao

VOCAB, D_MODEL, HEADS, CONTEXT = 50, 32, 2, 24  # head dim 16; 24 tokens: a partial tile


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head attention, then an MLP."""

    def __init__(self, backend: str):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.attn = ao.MultiHeadAttention(D_MODEL, D_MODEL, CONTEXT, dropout=0.0,
                                          num_heads=HEADS, backend=backend)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(),
                                 nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + position embeddings, two blocks, a final norm and the vocabulary head."""

    def __init__(self, backend: str):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.Sequential(Block(backend), Block(backend))
        self.head = nn.Sequential(nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, VOCAB))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> logits (B, L, VOCAB)."""
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.blocks(x))


def tiny_gpt(backend: str) -> TinyGPT:
    torch.manual_seed(0)  # the backend creates no parameters: both get the same weights
    return TinyGPT(backend)


def token_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, CONTEXT + 1), generator=generator(1))


def train(model: nn.Module, steps: int) -> list[float]:
    """Next-token cross-entropy on one fixed batch, AdamW; the loss before each step."""
    tokens = token_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_fused_and_eager_backends_train_alike():
    fused, eager = train(tiny_gpt("triton"), steps=6), train(tiny_gpt("eager"), steps=6)
    assert fused[-1] < fused[0] - 0.1, f"the loss did not fall: {fused}"
    # float32 rounding carried through six Adam updates (measured: 1 ulp apart); a wrong
    # mask, scale or gradient moves these losses by 1e-2 or more.
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(eager), rtol=1e-5, atol=1e-5)


def test_compiled_gpt_matches_eager_outputs_and_gradients():
    # aot_eager: the whole model traced through AOTAutograd, forward and backward. Inductor
    # on this CPU model spends ~45 s compiling C++; tests/test_compile.py runs inductor on
    # the attention alone.
    torch._dynamo.reset()
    model, ids = tiny_gpt("triton"), token_batch()[:, :-1]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # graph breaks raise
    results = []
    for run in (model, compiled):
        model.zero_grad()
        logits = run(ids)
        logits.square().mean().backward()
        results.append([logits.detach(), *(p.grad.clone() for p in model.parameters())])
    # The same ops and kernels on the same inputs.
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
