"""PNG plots of a sweep: one panel per (mode, head dim, masking: causal or full, sliding
window, softcap, packed or padded documents, decoding), one line per provider."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bench.cases import MODES
from bench.measure import Row


def _panel(row: Row) -> tuple:
    return (row.mode, row.d, row.causal, row.window, row.softcap, row.layout)


def _panel_order(panel: tuple) -> tuple:
    mode, d, causal, window, softcap, layout = panel
    return (MODES.index(mode), d, not causal, window is not None, window or 0,
            softcap is not None, softcap or 0, layout or "")


def _panel_title(panel: tuple) -> str:
    mode, d, causal, window, softcap, layout = panel
    title = f"{mode}, d={d}, {'causal' if causal else 'full'}"
    title += "" if window is None else f", window {window}"
    title += "" if softcap is None else f", softcap {softcap:g}"
    if layout == "decode":
        return title + ", decoding (n: cache length)"
    return title + ("" if layout is None else f", {layout} documents")


def plot_vs_seqlen(rows: Sequence[Row], metric: str, ylabel: str, title: str, path: Path
                   ) -> None:
    """Plot ``metric`` (a Row field) against sequence length for every ok provider row.

    Lines are labelled by provider (and by dtype, by dropout probability when the sweep has
    several); a panel with no ok rows says so, so a CPU run still shows which panels exist.
    """
    panels = sorted({_panel(r) for r in rows}, key=_panel_order)
    several_dtypes = len({r.dtype for r in rows}) > 1
    several_dropouts = len({r.p for r in rows}) > 1
    cols = min(3, len(panels))
    fig = Figure(figsize=(5 * cols, 3.6 * math.ceil(len(panels) / cols)), layout="constrained")
    axes = list(fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).flat)
    lengths = sorted({r.n for r in rows})
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels, strict=False):
        ax.set(title=_panel_title(panel), xlabel="sequence length", ylabel=ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlim(lengths[0] / 1.2, lengths[-1] * 1.2)
        points = [r for r in rows if _panel(r) == panel
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

