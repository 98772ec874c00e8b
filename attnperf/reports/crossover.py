"""Crossovers: the length from which an efficient mechanism is faster than dense attention, and the
length from which it needs less memory.

An efficient mechanism (a window, top-k, strided or BigBird sparsity, linear attention) pays a
fixed cost — gathering, masking, a feature map, a less tuned kernel — and saves work that grows
with n, so it overtakes dense attention only past some length. Where that length lies is the
question a user asks of a sweep; this module answers it from (length, value) series.

**Reference**: the dense attention with the same causality — ``causal`` for a variant whose
mechanism is causal (sliding_window, strided, linear_causal …), ``full`` otherwise (local, topk,
bigbird, linear): the efficient mechanism then differs from its reference only in which keys it
attends or how it weights them. Both on the same backend where both ran there; otherwise the
reference on the backend fastest at its longest length, and the line names both.

**How** (:func:`crossover`):

* ``measured`` — the grid brackets the crossing: it is slower or equal at one length and faster
  at every longer one. The length is interpolated log-log between the two bracketing lengths
  (time ∝ n^p between them), as the scaling plot draws it.
* ``extrapolated`` — not faster at the longest length, and the fitted power laws close the gap:
  the ratio at the longest length shrinks as n^(p_eff − p_ref), with both exponents fitted over
  the longer half of the lengths (where fixed per-call costs no longer flatten the slopes), so
  the crossing follows from the measured ratio there. The fitted range is stated.
* ``always`` — faster at every length of the grid (nothing says where it starts below it).
* ``never`` — the efficient exponent is not below the reference's (the gap stays or grows), the
  two are equal everywhere (a backend that computes it densely), or the fits cross only beyond
  :data:`HORIZON` times the longest length, where a power law fitted on the grid says nothing
  reliable.
* ``unknown`` — fewer than two lengths with a positive value in both series.

``predicted`` replaces ``measured`` when the series are the analyzer's predictions (roofline time,
predicted peak memory) rather than measurements: useful where nothing was timed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from attnperf.analysis.scaling import tail_exponent
from attnperf.catalog import get_variant
from attnperf.records import Record
from attnperf.reports.predictions import Row

#: Mechanisms that attend every key (a bias or a rotation changes no key set; decode is one query of
#: full attention): variants of these are the references, never compared themselves.
DENSE_MECHANISMS = frozenset({"full", "alibi", "rope", "decode"})
#: An extrapolated crossing farther than this many times the longest length is reported as never:
#: a power law fitted over one grid is not evidence six doublings beyond it.
HORIZON = 64
HOWS = ("measured", "predicted", "extrapolated", "always", "never", "unknown")


@dataclass(frozen=True)
class Crossing:
    """Where one series drops below another, and how that was found (see the module docstring).

    ``length``: the crossing (measured, predicted, extrapolated), else None. ``lengths``: the
    bracketing lengths (measured, predicted), the fitted range (extrapolated, never) or the
    lengths compared (always). ``exponents``: (efficient, reference) fitted over ``lengths``
    where a fit was used. ``within``: for never, the horizon the fits were followed to (None
    when they do not converge at all). ``why``: for unknown, and for never when the two series are
    equal (a backend that computes the efficient variant densely)."""

    how: str
    length: float | None = None
    lengths: tuple[int, int] | None = None
    exponents: tuple[float, float] | None = None
    within: int | None = None
    why: str = ""

    def describe(self, what: str) -> str:
        """The phrase for ``what`` ("faster", "less memory"), e.g. "faster from n ≈ 3,100
        (measured, between 2048 and 4096)"."""
        low, high = self.lengths or (0, 0)
        if self.how in ("measured", "predicted"):
            return f"{what} from n ≈ {_round(self.length)} ({self.how}, between {low} and {high})"
        if self.how == "extrapolated":
            p, q = self.exponents or (math.nan, math.nan)
            return f"{what} from n ≈ {_round(self.length)} (extrapolated from {low}–{high}: n^{p:.2f} vs n^{q:.2f})"
        if self.how == "always":
            return f"{what} at every length compared ({low}–{high})"
        if self.how == "never":
            return self._never(what)
        return f"{what}: unknown ({self.why})"

    def _never(self, what: str) -> str:
        low, high = self.lengths or (0, 0)
        if self.why:
            return f"never {what}: {self.why} ({low}–{high})"
        p, q = self.exponents or (math.nan, math.nan)
        if self.within is None:
            return f"never {what} within the grid (exponent {p:.2f} ≥ the reference's {q:.2f}, fitted {low}–{high})"
        return (f"never {what} within n ≤ {self.within:,} ({HORIZON}× the longest length: exponents {p:.2f} vs "
                f"{q:.2f}, fitted {low}–{high})")  # fmt: skip


def _round(length: float | None) -> str:
    """Two significant figures: the crossing of two noisy curves is not known to the token."""
    return "?" if length is None else f"{float(f'{length:.2g}'):,.0f}"


def crossover(
    efficient: Sequence[tuple[float, float]],
    reference: Sequence[tuple[float, float]],
    *,
    predicted: bool = False,
) -> Crossing:
    """Where ``efficient``'s values (time or memory, by length) drop below ``reference``'s for good.

    Only lengths present in both with positive values are compared (a power law has no zero).
    ``predicted``: the series are predictions, and a bracketed crossing says so."""
    eff = {float(n): float(v) for n, v in efficient if v is not None and v > 0}
    ref = {float(n): float(v) for n, v in reference if v is not None and v > 0}
    common = sorted(set(eff) & set(ref))
    if len(common) < 2:
        shown = ", ".join(f"{n:g}" for n in common) or "none"
        return Crossing("unknown", why=f"fewer than 2 lengths with a positive value in both (common: {shown})")
    logs = [math.log(eff[n] / ref[n]) for n in common]  # log of the ratio: < 0 where the efficient one wins
    low, high = int(common[0]), int(common[-1])
    if all(r < 0 for r in logs):
        return Crossing("always", lengths=(low, high))
    if all(abs(r) < 1e-9 for r in logs):  # a backend that computes the efficient variant densely
        return Crossing("never", lengths=(low, high), why="the same as the reference at every length")
    last = max(i for i, r in enumerate(logs) if r >= 0)  # the longest length where it does not win
    if last < len(common) - 1:
        (n0, r0), (n1, r1) = (common[last], logs[last]), (common[last + 1], logs[last + 1])
        length = math.exp(math.log(n0) + r0 / (r0 - r1) * (math.log(n1) - math.log(n0)))
        return Crossing("predicted" if predicted else "measured", length=length, lengths=(int(n0), int(n1)))
    return _extrapolate(common, [eff[n] for n in common], [ref[n] for n in common], logs[-1])


def _extrapolate(lengths: list[float], eff: list[float], ref: list[float], gap: float) -> Crossing:
    """Not faster at the longest length (log ratio ``gap`` ≥ 0 there): where the power laws fitted
    over the longer half close that gap, if they do within :data:`HORIZON`."""
    fit_eff, fit_ref = tail_exponent(lengths, eff), tail_exponent(lengths, ref)
    fitted = (int(min(fit_eff.lengths)), int(max(fit_eff.lengths)))
    exponents = (fit_eff.exponent, fit_ref.exponent)
    closing = fit_ref.exponent - fit_eff.exponent  # how fast the log ratio falls per unit of log n
    if closing <= 0:
        return Crossing("never", lengths=fitted, exponents=exponents)
    log_length = math.log(lengths[-1]) + gap / closing
    if log_length > math.log(HORIZON * lengths[-1]):
        return Crossing("never", lengths=fitted, exponents=exponents, within=int(HORIZON * lengths[-1]))
    return Crossing("extrapolated", length=math.exp(log_length), lengths=fitted, exponents=exponents)


class Point(NamedTuple):
    """One measured or predicted point: seconds (or any time unit, the same for every point) and
    peak bytes (or any memory unit); None where the point has no such figure."""

    variant: str
    backend: str
    batch: int
    seq_len: int
    time: float | None
    peak: float | None


@dataclass(frozen=True)
class Crossover:
    """An efficient variant on ``backend`` against its dense ``reference`` on ``reference_backend``
    ("" when the reference was not in the grid): where it becomes faster and where it needs less
    memory. ``source``: "measured" or "predicted" (roofline time and predicted peak)."""

    variant: str
    reference: str
    backend: str
    reference_backend: str
    batch: int
    source: str
    time: Crossing
    memory: Crossing

    def line(self, *, show_batch: bool = False) -> str:
        """One line, e.g. "crossover sliding_window vs causal (sdpa): faster from n ≈ 3,100 (measured,
        between 2048 and 4096); less memory from n ≈ 1,000 (extrapolated from 256–1024: …)"."""
        if not self.reference_backend:
            on = f"{self.backend}"
        elif self.reference_backend == self.backend:
            on = self.backend
        else:
            on = f"{self.variant} on {self.backend}, {self.reference} on {self.reference_backend}"
        on += f", batch {self.batch}" if show_batch else ""
        head = f"crossover {self.variant} vs {self.reference} ({on})"
        if self.source == "predicted":
            head += ", predicted"
        if not self.reference_backend:
            return f"{head}: {self.time.why}"
        return f"{head}: {self.time.describe('faster')}; {self.memory.describe('less memory')}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reference_of(variant: str) -> str | None:
    """The dense variant ``variant`` is measured against (``causal`` for a causal mechanism, else
    ``full``), or None for a dense variant itself."""
    v = get_variant(variant)
    if v.mechanism in DENSE_MECHANISMS or v.decode:
        return None
    return "causal" if v.options.get("causal") else "full"


def crossovers(points: Iterable[Point], *, predicted: bool = False) -> list[Crossover]:
    """Per efficient variant, backend and batch in ``points``: the crossover against its reference.

    Variants come in the order of ``points``; an efficient variant whose reference is not among the
    points gets one entry saying so (nothing to compare it with)."""
    times: dict[tuple[str, str, int], list[tuple[int, float | None]]] = {}
    peaks: dict[tuple[str, str, int], list[tuple[int, float | None]]] = {}
    for p in points:
        times.setdefault((p.variant, p.backend, p.batch), []).append((p.seq_len, p.time))
        peaks.setdefault((p.variant, p.backend, p.batch), []).append((p.seq_len, p.peak))
    source = "predicted" if predicted else "measured"
    out: list[Crossover] = []
    for variant, backend, batch in times:
        reference = reference_of(variant)
        if reference is None:
            continue
        ref_backend = _reference_backend(times, reference, backend, batch)
        if ref_backend is None:
            why = Crossing("unknown", why=f"{reference} not measured at batch {batch}; add it to --variants")
            out.append(Crossover(variant, reference, backend, "", batch, source, why, why))
            continue
        key, ref_key = (variant, backend, batch), (reference, ref_backend, batch)
        out.append(Crossover(
            variant, reference, backend, ref_backend, batch, source,
            time=crossover(times[key], times[ref_key], predicted=predicted),
            memory=crossover(peaks[key], peaks[ref_key], predicted=predicted),
        ))  # fmt: skip
    return out


def _reference_backend(
    times: dict[tuple[str, str, int], list[tuple[int, float | None]]], reference: str, backend: str, batch: int
) -> str | None:
    """``backend`` where the reference ran there; else the reference's backend fastest at its longest
    timed length (the dense attention one would otherwise use); None where the reference never ran."""
    if (reference, backend, batch) in times:
        return backend
    best: tuple[int, float, str] | None = None  # (-length, time, backend): longest length first, then fastest
    for (v, b, bb), series in times.items():
        timed = [(n, t) for n, t in series if t is not None and t > 0]
        if v == reference and bb == batch and timed:
            n, t = max(timed)
            best = min(best or (-n, t, b), (-n, t, b))
    return best[2] if best is not None else None


def points_of_records(records: Iterable[Record]) -> list[Point]:
    """A sweep's ok records as points: the time its tables show (the replay where there is one) and
    the measured peak."""
    return [Point(r.variant, r.backend, r.batch, r.seq_len, r.shown_s, r.peak_bytes) for r in records if r.ok]


def points_of_rows(rows: Iterable[Row], *, predicted: bool) -> list[Point]:
    """``attnperf analyze``'s rows as points: the roofline time and the predicted peak (``predicted``),
    else the measured ones of the rows that ran."""
    if predicted:
        return [Point(r.variant, r.backend, int(r.case["batch"]), r.seq_len, r.bound_ms, r.pred_mib) for r in rows]
    return points_of_records(r.measured for r in rows if r.measured is not None)


def lines(found: Sequence[Crossover]) -> list[str]:
    """The lines printed under a table: a blank line and a heading, then one line per crossover (the
    batch named only where several batches were compared); none where nothing was compared."""
    if not found:
        return []
    show_batch = len({c.batch for c in found}) > 1
    heading = "crossovers against dense attention of the same causality (full, or causal for a causal variant):"
    return ["", heading, *(c.line(show_batch=show_batch) for c in found)]
