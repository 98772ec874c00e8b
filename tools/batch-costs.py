"""Per-process costs of batch results files, and every reason a point did not run.

python tools/batch-costs.py OUT.json [OUT.json ...]
"""

import json
import sys
from collections import Counter

from attnperf.batchrun import process_costs
from attnperf.records import load_records

reasons: Counter = Counter()
for path in sys.argv[1:]:
    output = load_records(path)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in process_costs(output).items()}))
    for record in output.records:
        if not record.ok:
            reasons[(record.status.value, record.backend, (record.reason or "")[:110])] += 1
for (status, backend, reason), count in sorted(reasons.items()):
    print(f"{count:4d} {status:11s} {backend:14s} {reason}")
