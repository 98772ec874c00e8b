"""Per-process costs of attnperf.batch outputs, and every reason a point did not run.

python tools/batch-costs.py OUT.json [OUT.json ...]
"""

import json
import sys
from collections import Counter

from attnperf.batch import process_costs

reasons: Counter = Counter()
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as handle:
        output = json.load(handle)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in process_costs(output).items()}))
    for record in output["records"]:
        if record["status"] != "ok":
            reasons[(record["status"], record["spec"]["backend"], (record.get("reason") or "")[:110])] += 1
for (status, backend, reason), count in sorted(reasons.items()):
    print(f"{count:4d} {status:11s} {backend:14s} {reason}")
