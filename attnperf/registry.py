"""Which (mechanism, backend) pairs exist and which run here: the support matrix."""

from __future__ import annotations

from collections.abc import Iterable

from attnperf.backends import get_backend
from attnperf.case import Case
from attnperf.catalog import Variant
from attnperf.mechanisms import get_mechanism


def reason_for(mechanism: str, backend: str, case: Case) -> str | None:
    """None when ``backend`` can run ``mechanism`` on ``case`` here, else why not."""
    mech = get_mechanism(mechanism)
    try:
        mech.validate(case)
    except ValueError as exc:
        return f"case does not fit {mech.name}: {exc}"
    return get_backend(backend).supports(mech, case)


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
