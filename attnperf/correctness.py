"""Correctness: every (mechanism, backend, case) against the mechanism's float64 reference.

The same check runs in the test suite and, once per pair and case, in front of every
benchmark: :func:`verified_runner` refuses to hand out a closure whose result is wrong, so a
wrong result is never reported as a speed.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

import torch

from attnperf.backends import Backend, Runner, Unsupported, get_backend
from attnperf.case import Case, make_inputs
from attnperf.mechanisms import Mechanism, get_mechanism
from attnperf.mechanisms.base import expand_kv
from attnperf.records import Status

#: Above this many score elements (B·H·Lq·Lk) the float64 CPU reference is computed for a
#: sample of query rows only: rows are independent in every mechanism, and a full float64
#: reference of a 16k-token case would take minutes and tens of GB.
FULL_CHECK_LIMIT = 2**26
SAMPLED_ROWS = 64
#: Gradients are held to this multiple of the forward bound: each one sums products over many
#: rows or keys, so its rounding error grows past the forward's (flash-attn's own tests allow 3×
#: the forward's error for gradients).
GRADIENT_FACTOR = 3.0


class WrongResult(AssertionError):
    """A backend's output differs from the reference by more than its bound."""


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; ``inf`` when ``out`` has a NaN or an infinity."""
    out64 = out.detach().to(device="cpu", dtype=torch.float64)
    if out64.shape != ref.shape:
        raise WrongResult(f"output shape {tuple(out64.shape)} != reference shape {tuple(ref.shape)}")
    if not torch.isfinite(out64).all():
        return float("inf")
    return float((out64 - ref).norm() / ref.norm().clamp_min(torch.finfo(torch.float64).tiny))


@dataclass(frozen=True)
class CheckResult:
    mechanism: str
    backend: str
    case_id: str
    status: Status
    error: float | None = None
    bound: float | None = None
    reason: str | None = None
    #: The kernel a dispatching backend (``sdpa``) picked for this case, where it says.
    kernel: str | None = None
    #: The seed of the random inputs (``check(..., seed=)`` replays a wrong result exactly).
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(**data | {"status": Status(data["status"])})


def run_unsupported_aware(backend: Backend, fn: Runner) -> torch.Tensor:
    """Call ``fn``; a run-time refusal the backend declares (e.g. "No available kernel")
    becomes :class:`Unsupported` with the library's own text."""
    try:
        return fn()
    except Unsupported:
        raise
    except RuntimeError as exc:  # kernels say "cannot" only at run time; keep their words
        text = str(exc)
        if any(marker in text for marker in backend.unsupported_errors):
            raise Unsupported(text.strip().splitlines()[0]) from exc
        raise


def sample_rows(case: Case, seed: int) -> torch.Tensor | None:
    """Query rows to check for a long case (first, last and random ones), or None for all."""
    if case.batch * case.heads * case.q_len * case.k_len <= FULL_CHECK_LIMIT or case.q_len <= SAMPLED_ROWS:
        return None
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(case.q_len - 2, generator=gen)[: SAMPLED_ROWS - 2] + 1
    return torch.cat([torch.tensor([0, case.q_len - 1]), picks]).sort().values


def gradient_error(mech: Mechanism, be: Backend, case: Case, seed: int, rows: torch.Tensor | None) -> float:
    """The largest relative error of the backend's ``dq, dk, dv`` against the float64 reference's
    gradients, for a random output gradient on the checked rows (zero elsewhere: every output row
    depends on its own query only, so the sampled rows' gradients are exact to compare)."""
    q, k, v = make_inputs(case, seed=seed, requires_grad=True)
    out = run_unsupported_aware(be, be.prepare(mech, case, q, k, v))
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    checked = torch.arange(case.q_len) if rows is None else rows
    keep = torch.zeros(grad.shape[:-1], dtype=torch.bool)
    keep[:, :, checked] = True
    ambiguous = mech.ambiguous_rows(q, k, case, rows)  # rows that may select other keys: no gradient through them
    if ambiguous is not None and not ambiguous.all():
        keep[:, :, checked] &= ~ambiguous.cpu()
    grad[~keep] = 0
    out.backward(grad.to(device=out.device, dtype=out.dtype))
    q64, k64, v64 = (t.detach().to(device="cpu", dtype=torch.float64).requires_grad_(True) for t in (q, k, v))
    ref = mech.weights(q64, k64, case, rows) @ expand_kv(v64, case.heads)
    ref.backward(grad if rows is None else grad[:, :, rows])
    errors = [relative_error(t.grad, t64.grad) for t, t64 in ((q, q64), (k, k64), (v, v64))]
    return max(errors)


def forward_error(
    mech: Mechanism, be: Backend, case: Case, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    out: torch.Tensor, seed: int,
) -> tuple[float, float]:  # fmt: skip
    """(relative error, bound) of ``out``, the backend's output on ``inputs``, against the float64
    reference: on the sampled rows of a long case (:func:`sample_rows`), with the backend's bound
    for the dtype widened by the mechanism's half-precision factor."""
    rows = sample_rows(case, seed)
    if rows is not None:
        out = out[:, :, rows.to(out.device)]
    ref = mech.reference(*inputs, case, rows)
    bound = be.bound(case.dtype) * (mech.half_precision_factor if case.dtype in ("bfloat16", "float16") else 1.0)
    if out.shape != ref.shape or not torch.isfinite(out).all():  # a NaN is wrong in any row, left out or not
        return relative_error(out, ref), bound
    ambiguous = mech.ambiguous_rows(inputs[0], inputs[1], case, rows)
    # Rows a correct float32 result may legitimately differ in; if that were every row, nothing
    # would be compared, so then all of them are.
    if ambiguous is not None and not ambiguous.all():
        out = out.masked_fill(ambiguous.to(out.device)[..., None], 0)
        ref = ref.masked_fill(ambiguous.to(ref.device)[..., None], 0)
    return relative_error(out, ref), bound


def check(
    mechanism: str | Mechanism, backend: str | Backend, case: Case, *, seed: int | None = None, backward: bool = False
) -> CheckResult:
    """Compare one backend with the reference on fresh random inputs (a random seed unless given).

    ``backward`` also compares the gradients of ``q``, ``k`` and ``v`` with the float64
    reference's, bounded by :data:`GRADIENT_FACTOR` × the forward bound: a backward is never timed
    unless it is right too."""
    mech, be = get_mechanism(mechanism), get_backend(backend)
    mech.validate(case)
    result = {"mechanism": mech.name, "backend": be.name, "case_id": case.id}
    reason = be.supports(mech, case, backward=backward)
    if reason is not None:
        return CheckResult(**result, status=Status.UNSUPPORTED, reason=reason)
    seed = secrets.randbelow(2**31) if seed is None else seed
    result["seed"] = seed
    q, k, v = make_inputs(case, seed=seed)
    try:
        with torch.no_grad():
            runner = be.prepare(mech, case, q, k, v)
            result["kernel"] = getattr(runner, "kernel", None)
            out = run_unsupported_aware(be, runner)
            # A runner that computes a shard of the output (context parallelism: this rank's
            # part of the sequence) carries ``gather``, which assembles the whole output.
            gather = getattr(runner, "gather", None)
            if gather is not None:
                out = gather(out)
    except Unsupported as exc:
        return CheckResult(**result, status=Status.UNSUPPORTED, reason=str(exc))
    error, bound = forward_error(mech, be, case, (q, k, v), out, seed)
    if error > bound or not backward:
        return CheckResult(**result, status=Status.OK if error <= bound else Status.WRONG, error=error, bound=bound)
    try:
        grad_error = gradient_error(mech, be, case, seed, sample_rows(case, seed))
    except Unsupported as exc:
        return CheckResult(**result, status=Status.UNSUPPORTED, reason=f"backward: {exc}")
    grad_bound = GRADIENT_FACTOR * bound
    status = Status.OK if grad_error <= grad_bound else Status.WRONG
    reason = None if status is Status.OK else f"gradients: relative error {grad_error:.3g} > bound {grad_bound:.3g}"
    return CheckResult(**result, status=status, error=max(error, grad_error), bound=bound, reason=reason)


def verified_runner(
    mechanism: str | Mechanism, backend: str | Backend, case: Case, *, requires_grad: bool = False,
    checked: CheckResult | None = None, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Runner, CheckResult]:  # fmt: skip
    """A closure to time, built only after the pair passed :func:`check` on other inputs.

    ``checked``: a verdict this very code already reached for this pair and case (the batch
    runner caches them per code fingerprint); it is used instead of checking again. ``inputs``:
    the ``q, k, v`` the closure runs on (fresh ones of :func:`make_inputs` by default), for a
    caller that reads their gradients.
    Raises :class:`Unsupported` (with the reason) or :class:`WrongResult`; benchmarks turn the
    first into "skipped" and let the second fail loudly.
    """
    mech, be = get_mechanism(mechanism), get_backend(backend)
    result = checked if checked is not None else check(mech, be, case, backward=requires_grad)
    if result.status is Status.UNSUPPORTED:
        raise Unsupported(result.reason or "unsupported")
    if result.status is Status.WRONG:
        raise WrongResult(
            f"{be.name} on {mech.name} {case.id}: "
            + (result.reason or f"relative error {result.error:.3g} > bound {result.bound:.3g}")
            + (f" (inputs of seed {result.seed})" if result.seed is not None else "")
        )
    q, k, v = inputs if inputs is not None else make_inputs(case, requires_grad=requires_grad, on_device=True)
    return be.prepare(mech, case, q, k, v), result
