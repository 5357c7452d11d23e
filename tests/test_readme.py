"""Every python block of README.md and bench/README.md runs as written: it defines what it
uses. A block that needs what a machine may lack says so on its first line, e.g.
``# needs: torchrun, cuda``; it still has to compile, and runs where its needs are met."""

import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
READMES = ("README.md", "bench/README.md")
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# What a block may need; torchrun blocks start one process per GPU, so no test runs them.
NEEDS = {"cuda": torch.cuda.is_available(), "torchrun": False}


def python_blocks() -> list:
    blocks = []
    for name in READMES:
        text = (REPO / name).read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first line of code
            blocks.append(pytest.param(match.group(1), f"{name}:{line}", id=f"{name}:{line}"))
    return blocks


def needs(block: str) -> list[str]:
    first = block.partition("\n")[0]
    if not first.startswith("# needs:"):
        return []
    return [need.strip() for need in first.removeprefix("# needs:").split(",")]


@pytest.mark.parametrize("block, where", python_blocks())
def test_readme_block_runs_as_written(block, where, monkeypatch):
    code = compile(block, where, "exec")
    assert set(needs(block)) <= set(NEEDS), f"{where}: unknown needs {needs(block)}"
    if unmet := [need for need in needs(block) if not NEEDS[need]]:
        pytest.skip(f"needs {', '.join(unmet)}")
    # A block may set TRITON_INTERPRET (the CPU usage example does): restored afterwards.
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
    exec(code, {"__name__": "__readme__"})


def test_the_usage_example_has_a_cpu_sized_variant():
    usage = (REPO / "README.md").read_text().partition("## Usage")[2].partition("\n## ")[0]
    blocks = BLOCK.findall(usage)
    assert any("ao.flash_attention(" in b and not needs(b) for b in blocks)
