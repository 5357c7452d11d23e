"""The provider x case x mode sweep, with a progress bar, and the speedup columns."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tqdm import tqdm

from bench.accuracy import float64_reference
from bench.cases import Case
from bench.measure import Inputs, Row, Timing, error_status, measure
from bench.providers import AttentionFn, Provider


def run_sweep(cases: Sequence[Case], providers: Sequence[Provider], modes: Sequence[str],
              timing: Timing) -> list[Row]:
    """One row per (case, provider, mode), decoding cases in the fwd mode only (inference).
    All providers of a case share its random inputs and its float64 reference (none for a case
    with dropout: the providers' masks differ, so their errors against it would mean nothing);
    a provider that cannot run, or fails to build, still gets its rows, with the reason as
    status."""
    rows: list[Row] = []
    bar = tqdm(total=len(providers) * sum(len(_modes(case, modes)) for case in cases),
               unit="row")
    for case in cases:
        case_modes = _modes(case, modes)
        if not case_modes:
            continue
        x = Inputs.random(case)
        expected = (float64_reference(x.q, x.k, x.v, x.dout, **case.reference_options())
                    if case.dropout_p == 0 else None)
        for provider in providers:
            bar.set_postfix_str(f"{provider.name} {case.label()}")
            prepared = _prepare(provider, case)
            if isinstance(prepared, str):
                rows += [Row.for_case(provider.name, m, case, prepared) for m in case_modes]
                bar.update(len(case_modes))
                continue
            for mode in case_modes:
                rows.append(measure(Row.for_case(provider.name, mode, case), prepared, case,
                                    x, expected, timing))
                bar.update()
    bar.close()
    add_speedups(rows)
    return rows


def _modes(case: Case, modes: Sequence[str]) -> list[str]:
    """The ``modes`` a case runs: fwd alone when decoding (inference)."""
    return [m for m in modes if m == "fwd" or not case.decode]


def _prepare(provider: Provider, case: Case) -> AttentionFn | str:
    """The provider's attention function for ``case``, or the status its rows get instead."""
    try:
        reason = provider.unavailable(case)
        return provider.build(case) if reason is None else f"unavailable: {reason}"
    except Exception as exc:  # a provider that fails to build is a result too
        return error_status(exc)


def add_speedups(rows: list[Row]) -> None:
    """Set each ok row's speedup over eager and over the fastest other ok provider of the same
    problem (case and mode; time of the other / own time; NaN when there is none)."""
    problems: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.status == "ok":
            problems.setdefault(row.problem(), []).append(row)
    for group in problems.values():
        eager_ms = next((r.ms for r in group if r.provider == "eager"), math.nan)
        for row in group:
            others = [r.ms for r in group if r.provider != row.provider]
            row.speedup_vs_eager = eager_ms / row.ms
            row.speedup_vs_best_other = min(others) / row.ms if others else math.nan
