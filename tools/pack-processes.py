"""A trial pool's processes, packed small enough to keep in measurements/.

python tools/pack-processes.py OUT.tar.xz trial-*.json [points.json]

Each batch-runner results file keeps what the judge and `attnperf trials --reuse` read (the per-process
median and number of every timing, peak memory, first call, status, the injected records, the process's
meta) and drops what they do not: the samples inside a process (not independent evidence: the check
judges per-process medians), the case each record repeats from its spec, and per-step seconds. A pool
packed this way evaluates to the same table as the files it came from; unpack with `tar xJf` and run
`attnperf trials --reuse --workdir pool`.
"""

import io
import json
import sys
import tarfile
from pathlib import Path

DROPPED = ("samples_s", "replay_samples_s", "case", "seconds")


def packed(path: Path) -> bytes:
    data = json.loads(path.read_text())
    for name in ("records", "injected"):
        for record in data.get(name, []):
            for field in DROPPED:
                record.pop(field, None)
    return json.dumps(data, separators=(",", ":")).encode()


def main(out: str, *paths: str) -> None:
    with tarfile.open(out, "w:xz", preset=9) as tar:
        for path in map(Path, paths):
            body = packed(path) if path.name.startswith("trial-") else path.read_bytes()
            info = tarfile.TarInfo(f"pool/{path.name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
