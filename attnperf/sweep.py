"""A sweep: a grid's points in one mode (forward calls, or forward+backward steps), each measured
by :func:`attnperf.point.measure_point`, and a sweep that was stopped continued from its file.

Each point is checked against the float64 reference before it is timed; whatever happens to it
ends in a record (``ok``, ``unsupported``, ``wrong``, ``refused``, ``oom``, ``failed``) and the sweep
goes on. A sweep times the direct call; with ``cuda_graph`` it also times the call's CUDA-graph
replay, which its tables then show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attnperf.benchgrid import FORWARD, Grid
from attnperf.errors import UsageError
from attnperf.point import DIRECT, REPLAY, free_memory, intended_shape, measure_point
from attnperf.records import Record, ResultFile, Status, with_ratios

BASELINE = "eager"


def run_sweep(
    grid: Grid,
    *,
    repeat: int = 7,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    on_record: Callable[[list[Record]], None] | None = None,
    done: Iterable[Record] = (),
    cuda_graph: bool = False,
    min_sample_s: float | None = None,
    mode: str = FORWARD,
) -> list[Record]:
    """Run every point of ``grid`` not already in ``done`` (a resumed sweep's records, kept in
    front); ``on_record(records so far)`` after each one, so a sweep that is stopped midway (a time
    limit, Ctrl-C, a hung kernel) still leaves the points it finished on disk. ``mode``
    ``forward+backward`` times steps whose gradients were first held to the float64 reference's."""
    records = list(done)
    finished = {r.point for r in records}
    points = [p for p in grid.sweep_points(mode) if (p.variant, p.backend, p.seq_len, p.batch) not in finished]
    timings = (DIRECT, REPLAY) if cuda_graph else (DIRECT,)
    for spec in progress(points) if progress is not None else points:
        records += measure_point(spec, repeat=repeat, min_sample_s=min_sample_s, timings=timings)
        free_memory(grid.device, between_points=True)
        if on_record is not None:
            on_record(with_ratios(records, BASELINE))
    return with_ratios(records, BASELINE)


def resumable(
    results: ResultFile, grid: Grid, machine: Mapping[str, Any], *, cuda_graph: bool = False, mode: str = FORWARD
) -> list[Record]:
    """The records of an earlier run of this sweep that a resumed run keeps: all of them but the
    ``failed`` ones (measured again), points outside the new grid too (they were measured, and the
    user asked to continue that run).

    Refused (:class:`~attnperf.errors.UsageError`) when the file was written on another machine or
    software stack, when a record's shape or options differ from what this run's flags give at
    its point, or when it was timed with(out) ``--cuda-graphs`` or ``--backward`` and this run is not:
    the file would hold two runs under one name."""
    if results.meta.get("machine") != dict(machine):
        stack = results.meta.get("machine") or {}
        where = f"torch {stack.get('torch')}, {stack.get('gpu', 'cpu')}" if isinstance(stack, dict) else str(stack)
        raise UsageError(f"--resume: {results.path} was written on another machine or software stack ({where}); "
                         "--force starts over")  # fmt: skip
    otherwise = [r for r in results.records if r.ok and (r.replay_median_s is not None) != cuda_graph
                 and r.graph_reason is None]  # fmt: skip
    if otherwise:
        first = otherwise[0]
        how = "with its CUDA-graph replay" if first.replay_median_s is not None else "without --cuda-graphs"
        raise UsageError(f"--resume: {results.path} has {first.variant} × {first.backend} at {first.seq_len} timed "
                         f"{how}; --force starts over")  # fmt: skip
    other_mode = [r for r in results.records if r.mode != mode]
    if other_mode:
        first = other_mode[0]
        raise UsageError(f"--resume: {results.path} has {first.variant} × {first.backend} at {first.seq_len} timed "
                         f"as {first.mode}, this run as {mode}; --force starts over")  # fmt: skip
    changed = [(record, why) for record in results.records if (why := shape_change(record, grid)) is not None]
    if changed:
        first, why = changed[0]
        more = f" (and {len(changed) - 1} more points)" if len(changed) > 1 else ""
        raise UsageError(f"--resume: {results.path} has {first.variant} × {first.backend} at {first.seq_len} "
                         f"{why}{more}; --force starts over")  # fmt: skip
    return [r for r in results.records if r.status is not Status.FAILED]  # measured again


def shape_change(record: Record, grid: Grid) -> str | None:
    """None when ``record`` has the shape and options ``grid``'s flags give at its point (whether
    or not the point is in the grid), else how it differs: compared with the case for a record
    that has one, else with :func:`attnperf.point.intended_shape`."""
    spec = grid.spec(record.backend, record.variant, record.seq_len, batch=record.batch)
    if not record.case_id:
        if "heads" not in record.case:  # written before the shape was stored: nothing to compare
            return "without its shape (an older attnperf's record)"
        return None if dict(record.case) == intended_shape(spec) else "with another shape or options"
    try:
        case = spec.case().as_dict()
    except ValueError:  # these flags cannot build the point's case (another variant list, kv heads)
        return "with another shape or options"
    return None if dict(record.case) == case else "with another shape or options"
