"""The analyzer: predicted FLOPs, bytes, peak memory and roofline time, and fitted scaling,
each held against measurements (tests and ``attnperf analyze``)."""

from attnperf.analysis.flops import Flops, forward_flops
from attnperf.analysis.hardware import DATASHEETS, Hardware, datasheet_for, measured
from attnperf.analysis.memory import min_bytes, predicted_peak_bytes
from attnperf.analysis.roofline import Roofline, roofline
from attnperf.analysis.scaling import Fit, fit_exponent, tail_exponent

__all__ = [
    "DATASHEETS",
    "Fit",
    "Flops",
    "Hardware",
    "Roofline",
    "datasheet_for",
    "fit_exponent",
    "forward_flops",
    "measured",
    "min_bytes",
    "predicted_peak_bytes",
    "roofline",
    "tail_exponent",
]
