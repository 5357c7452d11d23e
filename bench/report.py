"""Writing results: the environment header, CSV and markdown tables of records (dicts)."""

from __future__ import annotations

import csv
import datetime
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import triton

Record = Mapping[str, object]

CPU_SMOKE_LABEL = "CPU interpreter smoke run: correctness only, timings have no performance meaning"
STATUS_WIDTH = 120  # longer statuses (compiler errors) are cut in markdown; the CSV keeps all


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's for a CPU run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def environment_header(device: torch.device, title: str) -> list[str]:
    """Markdown lines naming what produced the results: title, device, versions, date; a CPU
    run is labelled as a smoke run."""
    lines = [
        f"# {title}",
        "",
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, triton {triton.__version__}, "
        f"python {platform.python_version()}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]
    if device.type != "cuda":
        lines.append(f"- **{CPU_SMOKE_LABEL}**")
    return lines


def write_csv(records: Sequence[Record], path: Path) -> None:
    """All fields of ``records`` (which share their keys), full precision."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _cell(value: object) -> str:
    if value is None:  # e.g. no window, no softcap
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.2e}"
        return f"{value:.0f}" if abs(value) >= 1e3 else f"{value:.3g}"
    text = str(value).replace("|", "/")
    return text if len(text) <= STATUS_WIDTH else text[: STATUS_WIDTH - 3] + "..."


def markdown_table(records: Sequence[Record], columns: Mapping[str, str]) -> list[str]:
    """A markdown table of ``records`` with ``columns`` {field: heading}; NaN and None show
    empty."""
    lines = ["| " + " | ".join(columns.values()) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[field]) for field in columns) + " |" for r in records]
    return lines
