"""Reports: the analyzer's predictions resolved from names and joined with measurements.

They sit above the backends (they look mechanisms and backends up by name and read measured
records) and below the commands that print them; the formulas they apply are
:mod:`attnperf.analysis`'s.

* :mod:`.predictions` — ``attnperf analyze``'s table per point, with fitted exponents.
* :mod:`.complexity` — ``attnperf analyze --table``: big-O classes beside fitted exponents.
"""
