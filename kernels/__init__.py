"""Triton kernels for fused attention and their launch helpers. No autograd lives here.

``attention_forward``, ``attention_backward`` and ``decode_forward`` fill caller-allocated
tensors; the autograd wrappers, validation, dispatch and the score options they take
(``attention_ops.options.ScoreMods``, which the kernels read by attribute and never import)
live in ``attention_ops``.
"""

from .decode import decode_forward
from .dropout import DropoutStream, materialize_keep_mask
from .flash_bwd import attention_backward
from .flash_fwd import attention_forward
from .launch import LN2, interpreter_requested_too_late, is_interpreter, use_autotuning
from .varlen import PackedSequences

__all__ = [
    "LN2",
    "DropoutStream",
    "PackedSequences",
    "attention_backward",
    "attention_forward",
    "decode_forward",
    "interpreter_requested_too_late",
    "is_interpreter",
    "materialize_keep_mask",
    "use_autotuning",
]
