"""How many commits each series of an ``asv publish`` HTML has on one machine.

    python tools/html-points.py .asv/html MACHINE

asv writes one JSON per benchmark and environment under ``graphs/…/machine-NAME/…``: a list of
``[revision, value]``, the value a list over the parameter combinations for parameterized
benchmarks (null where a combination did not run). A history shows as series with several
points; this prints, per benchmark, the series and how many of them have 1, 2, 3+ points.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def series_lengths(data: list) -> list[int]:
    """Points per parameter combination (per series) of one graph file."""
    counts: Counter[int] = Counter()
    width = 1
    for entry in data:  # [revision, value, ...]: later fields are error bars
        value = entry[1]
        values = value if isinstance(value, list) else [value]
        width = max(width, len(values))
        for i, v in enumerate(values):
            if v is not None:
                counts[i] += 1
    return [counts[i] for i in range(width) if counts[i]]


def main(html: Path, machine: str) -> int:
    files = [p for p in sorted((html / "graphs").rglob("*.json"))
             if f"machine-{machine}" in p.parts and p.name != "summary.json"]  # fmt: skip
    if not files:
        print(f"no graphs for machine {machine} under {html}/graphs")
        return 1
    total: Counter[str] = Counter()
    for path in files:
        data = json.loads(path.read_text())
        if not isinstance(data, list):  # summaries beside the graphs
            continue
        lengths = series_lengths(data)
        if not lengths:
            continue
        bins = Counter("3+" if n >= 3 else str(n) for n in lengths)
        total.update(bins)
        print(f"{path.stem}: {len(lengths)} series; points per series {dict(sorted(bins.items()))}")
    print(f"all: {sum(total.values())} series on {machine}; points per series {dict(sorted(total.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
