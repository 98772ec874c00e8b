"""Which (mechanism, backend) pairs exist and which run here: the support matrix."""

from __future__ import annotations

from collections.abc import Iterable

from attnperf.backends import get_backend
from attnperf.benchgrid import BACKWARD, PointSpec
from attnperf.case import Case
from attnperf.catalog import Variant
from attnperf.mechanisms import get_mechanism


def reason_for(mechanism: str, backend: str, case: Case, *, backward: bool = False) -> str | None:
    """None when ``backend`` can run ``mechanism`` on ``case`` here, else why not."""
    mech = get_mechanism(mechanism)
    try:
        mech.validate(case)
    except ValueError as exc:
        return f"case does not fit {mech.name}: {exc}"
    return get_backend(backend).supports(mech, case, backward=backward)


def fit(spec: PointSpec) -> tuple[Case | None, str | None]:
    """``(case, None)`` when the point can run here, else ``(None, why not)``.

    The one place that decides: a case that cannot be built for the variant (``top_k`` above the
    keys, heads not divisible by ``kv_heads``) or does not fit its mechanism, and a backend that
    cannot run it here, each give their reason; the sweep, the check, the analyzer, the batch
    runner and asv (a skip) all ask this function, and record the reason and go on."""
    try:
        case = spec.case()
    except ValueError as exc:
        return None, f"case does not fit {spec.variant_name}: {exc}"
    reason = reason_for(spec.mechanism, spec.backend, case, backward=spec.mode == BACKWARD)
    return (case, None) if reason is None else (None, reason)


def support_matrix(
    variants: Iterable[Variant], backends: Iterable[str], *, seq_len: int, dtype: str, device: str
) -> dict[str, dict[str, str | None]]:
    """``{variant: {backend: reason or None}}`` for each variant's case at ``seq_len``."""
    backends = list(backends)
    matrix = {}
    for variant in variants:
        case = variant.case(seq_len, dtype=dtype, device=device)
        matrix[variant.name] = {b: reason_for(variant.mechanism, b, case) for b in backends}
    return matrix
