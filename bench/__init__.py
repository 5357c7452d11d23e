"""Benchmarks for attention-ops: the provider sweep (``python -m bench``), the GPT training
benchmark (``python -m bench.train_gpt``) and pytest-benchmark tests (``bench/test_bench.py``).

Triton decides at kernel-definition time whether to interpret, so on a machine without CUDA
this package selects the interpreter (``TRITON_INTERPRET=1``, unless the variable is already
set) on import, before any module of it imports ``attention_ops``; every entry point above
imports this package first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
