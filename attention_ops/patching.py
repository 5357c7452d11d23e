"""``patch_sdpa``: route ``torch.nn.functional.scaled_dot_product_attention`` to ours.

Code that looks the function up as ``F.scaled_dot_product_attention`` (or
``torch.nn.functional.scaled_dot_product_attention``) at call time picks up the patch, so
existing models run the fused kernel unchanged. A name bound earlier with
``from torch.nn.functional import scaled_dot_product_attention`` keeps torch's function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F

from attention_ops.sdpa import scaled_dot_product_attention

# The patches in place, oldest first: only the newest may be undone.
_installed: list[SDPAPatch] = []


class SDPAPatch:
    """One installed patch: ``undo()`` puts back the function it replaced.

    Also a context manager: the patch holds inside the ``with`` block. Patches nest; undo
    them in reverse order (a ``with`` block does), so each restores exactly what it found.
    """

    def __init__(self) -> None:
        self._replaced: Callable | None = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = scaled_dot_product_attention
        _installed.append(self)

    def undo(self) -> None:
        """Restore the function this patch replaced. A second call does nothing.

        Raises:
            RuntimeError: if a patch installed after this one is still in place, or something
                else replaced ``F.scaled_dot_product_attention`` since: restoring now would
                drop that replacement.
        """
        if self._replaced is None:
            return
        if _installed[-1] is not self or (
            F.scaled_dot_product_attention is not scaled_dot_product_attention
        ):
            raise RuntimeError(
                "torch.nn.functional.scaled_dot_product_attention was replaced after this "
                "patch; undo the patches in reverse order"
            )
        F.scaled_dot_product_attention, self._replaced = self._replaced, None
        _installed.pop()

    def __enter__(self) -> SDPAPatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.undo()


def patch_sdpa() -> SDPAPatch:
    """Make ``torch.nn.functional.scaled_dot_product_attention`` run
    ``attention_ops.scaled_dot_product_attention``.

    Returns:
        The installed patch: call ``.undo()`` to restore, or use it as a context manager.

    Example:
        >>> with attention_ops.patch_sdpa():
        ...     logits = model(tokens)  # its F.scaled_dot_product_attention calls are fused
        >>> patch = attention_ops.patch_sdpa()  # or for the rest of the program
        >>> patch.undo()
    """
    return SDPAPatch()
