"""The analyzer's formulas: FLOPs, bytes, peak memory and roofline time of a (mechanism, backend,
case), and the fit of a scaling exponent.

Formulas only: they take :class:`~attnperf.mechanisms.Mechanism` and backend objects (never
names) and import nothing above the mechanisms, so the backends can build on them. Resolving
names and joining predictions with measured records is :mod:`attnperf.reports`' work."""

from attnperf.analysis.flops import Flops, KernelFacts, forward_backward_flops, forward_flops
from attnperf.analysis.hardware import DATASHEETS, Hardware, datasheet_for
from attnperf.analysis.memory import min_bytes
from attnperf.analysis.roofline import Roofline, roofline
from attnperf.analysis.scaling import Fit, fit_exponent, tail_exponent

__all__ = [
    "DATASHEETS",
    "Fit",
    "Flops",
    "Hardware",
    "KernelFacts",
    "Roofline",
    "datasheet_for",
    "fit_exponent",
    "forward_backward_flops",
    "forward_flops",
    "min_bytes",
    "roofline",
    "tail_exponent",
]
