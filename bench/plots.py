"""PNG plots of a sweep: one panel per (mode, head dim, causal), one line per provider."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bench.cases import MODES
from bench.measure import Row


def plot_vs_seqlen(rows: Sequence[Row], metric: str, ylabel: str, title: str, path: Path
                   ) -> None:
    """Plot ``metric`` (a Row field) against sequence length for every ok provider row.

    Lines are labelled by provider (and by dtype, by dropout probability when the sweep has
    several); a panel with no ok rows says so, so a CPU run still shows which panels exist.
    """
    panels = sorted({(r.mode, r.d, r.causal) for r in rows},
                    key=lambda p: (MODES.index(p[0]), p[1], not p[2]))
    several_dtypes = len({r.dtype for r in rows}) > 1
    several_dropouts = len({r.p for r in rows}) > 1
    cols = min(3, len(panels))
    fig = Figure(figsize=(5 * cols, 3.6 * math.ceil(len(panels) / cols)), layout="constrained")
    axes = list(fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).flat)
    lengths = sorted({r.n for r in rows})
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (mode, d, causal) in zip(axes, panels, strict=False):
        ax.set(title=f"{mode}, d={d}, {'causal' if causal else 'full'}",
               xlabel="sequence length", ylabel=ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlim(lengths[0] / 1.2, lengths[-1] * 1.2)
        points = [r for r in rows if (r.mode, r.d, r.causal) == (mode, d, causal)
                  and r.status == "ok" and not math.isnan(getattr(r, metric))]
        lines = sorted({(r.provider, r.dtype, r.p) for r in points})
        for provider, dtype, p in lines:
            line = sorted((r.n, getattr(r, metric)) for r in points
                          if (r.provider, r.dtype, r.p) == (provider, dtype, p))
            label = provider + (f" {dtype}" if several_dtypes else "")
            label += f" p={p:g}" if several_dropouts else ""
            ax.plot(*zip(*line, strict=True), marker="o", label=label)
        if lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)

