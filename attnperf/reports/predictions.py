"""``attnperf analyze``'s table: the analyzer's predictions per point, joined with measurements.

A report, not a formula: it resolves the grid's mechanism and backend names and reads measured
records, so it sits above the backends and the analyzer's formulas (:mod:`attnperf.analysis`).

:func:`predict` gives each runnable point of a grid its FLOPs, minimum bytes, predicted peak
memory and roofline bound; :func:`join` holds them against a sweep's records (time, achieved
TFLOP/s, share of the roofline, measured peak and prediction / measurement); :func:`fit_exponents`
fits time and memory exponents over the lengths. The command only parses and prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attnperf.analysis.flops import forward_flops
from attnperf.analysis.hardware import Hardware
from attnperf.analysis.memory import min_bytes
from attnperf.analysis.roofline import roofline
from attnperf.analysis.scaling import fit_exponent, tail_exponent
from attnperf.backends import get_backend
from attnperf.benchgrid import Grid
from attnperf.mechanisms import get_mechanism
from attnperf.records import Record
from attnperf.registry import fit

MIB = 2**20


@dataclass(frozen=True)
class Row:
    """One point: the predictions, and the measurement when there is one."""

    variant: str
    backend: str
    seq_len: int
    useful_gflop: float
    executed_gflop: float
    min_mb: float
    pred_mib: float
    bound_ms: float
    limit: str
    case: dict[str, Any]
    measured: Record | None = None

    @property
    def ms(self) -> float | None:
        m = self.measured
        return m.median_s * 1e3 if m is not None and m.ok and m.median_s is not None else None

    @property
    def meas_mib(self) -> float | None:
        m = self.measured
        return m.peak_bytes / MIB if m is not None and m.ok and m.peak_bytes is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The row for the table and the JSON file, with the derived measurement columns."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "measured"}
        if self.measured is None:
            return data
        ms, meas = self.ms, self.meas_mib
        data["ms"] = ms if ms is not None else str(self.measured.status)
        if ms is not None:
            data |= {"tflops": self.useful_gflop / ms, "roofline_pct": 100 * self.bound_ms / ms}
        if meas is not None:
            data |= {"meas_mib": meas, "pred_over_meas": self.pred_mib / meas if meas > 0 else None}
        return data


def predict(grid: Grid, hardware: Hardware) -> list[Row]:
    """The predictions of every point of ``grid`` that can run here (the others are left out)."""
    rows = []
    for spec in grid.sweep_points():
        case, _reason = fit(spec)
        if case is None:
            continue
        mechanism, backend = get_mechanism(spec.mechanism), get_backend(spec.backend)
        flops = forward_flops(mechanism, backend, case)
        bound = roofline(mechanism, backend, case, hardware)
        rows.append(Row(
            variant=spec.variant, backend=spec.backend, seq_len=spec.seq_len, useful_gflop=flops.useful / 1e9,
            executed_gflop=flops.executed / 1e9, min_mb=min_bytes(case) / 1e6,
            pred_mib=backend.predicted_peak_bytes(mechanism, case) / MIB, bound_ms=bound.bound_s * 1e3,
            limit=bound.limited_by, case=case.as_dict(),
        ))  # fmt: skip
    return rows


def join(rows: Sequence[Row], records: Sequence[Record]) -> list[Row]:
    """Each row with the record measured at its point."""
    by_point = {(r.variant, r.backend, r.seq_len): r for r in records}
    return [dataclasses.replace(row, measured=by_point.get((row.variant, row.backend, row.seq_len))) for row in rows]


def fit_exponents(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per (variant, backend) with three or more measured lengths: time ∝ n^p over all lengths and
    over the longer half, memory ∝ n^q, with 95% intervals."""
    fits = []
    pairs = dict.fromkeys((r.variant, r.backend) for r in rows)
    for variant, backend in pairs:
        pts = [r for r in rows if r.variant == variant and r.backend == backend and r.ms is not None]
        if len({r.seq_len for r in pts}) < 3:
            continue
        lengths, times = [r.seq_len for r in pts], [r.ms for r in pts if r.ms is not None]
        t, tail = fit_exponent(lengths, times), tail_exponent(lengths, times)
        mem = [(r.seq_len, r.meas_mib) for r in pts if r.meas_mib]
        m = fit_exponent([n for n, _ in mem], [v for _, v in mem]) if len(mem) >= 3 else None
        fits.append({"variant": variant, "backend": backend, "time_exp": t.exponent,
                     "time_ci": f"[{t.low:.2f}, {t.high:.2f}]", "tail_exp": tail.exponent,
                     "tail_lens": f"{min(tail.lengths)}–{max(tail.lengths)}",
                     "mem_exp": m.exponent if m else None,
                     "mem_ci": f"[{m.low:.2f}, {m.high:.2f}]" if m else None})  # fmt: skip
    return fits
