#!/usr/bin/env bash
# Check the published asv HTML in headless Chromium on a machine without internet access.
# asv's index.html loads jQuery, flot, Bootstrap and three plugins from public CDNs; this copies
# the site to a scratch folder, points those tags at the same libraries from the npm registry
# (integrity attributes dropped, since the npm files are not byte-identical to the CDN builds),
# serves it on localhost and reports what the summary page and one benchmark's graph page show.
# Needs npm with access to its registry, and Debian's chromium. stupid-table-plugin 1.0.1 (the
# CDN's) was never published to npm: 1.1.3 stands in for it.
#   bash tools/html-check.sh [HTML_DIR (.asv/html)] [BENCHMARK (bench_attention.TimeForward.time_forward)]
# SCREENSHOT=graph.png also saves a picture of the graph page, to see the points themselves.
set -euo pipefail
html=${1:-.asv/html}; bench=${2:-bench_attention.TimeForward.time_forward}
[[ -f $html/index.html ]] || { echo "no $html/index.html: run nox -s publish first"; exit 2; }
command -v chromium >/dev/null || { echo "chromium not found (Debian: apt-get install chromium)"; exit 2; }
command -v npm >/dev/null || { echo "npm not found"; exit 2; }
work=$(mktemp -d); server=
trap '{ [[ -n $server ]] && kill "$server"; } 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r "$html" "$work/site"
(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund jquery@3.3.1 flot@0.8.3 \
  flot-orderbars@1.0.0 stupid-table-plugin@1.1.3 blueimp-md5@2.19.0 bootstrap@3.1.1)
python3 - "$work" <<'PY'
import re, shutil, sys
from pathlib import Path

work = Path(sys.argv[1]); site = work / "site"; vendor = site / "vendor"; vendor.mkdir()
files = {p.name: p for p in sorted((work / "node_modules").rglob("*.*s")) if "test" not in p.parts}

def local(match: re.Match) -> str:
    url = match[2]; name = url.rsplit("/", 1)[1]
    bare = re.sub(r"-\d+(\.\d+)+", "", name)  # jquery-3.3.1.min.js is jquery.min.js on npm
    found = files.get(bare) or files.get(bare.replace(".min.", "."))
    if found is None:
        sys.exit(f"no local copy of {url}")
    shutil.copy(found, vendor / name)
    return f'{match[1]}="vendor/{name}"'

index = site / "index.html"
text = re.sub(r'(src|href)="(https://[^"]+\.(?:js|css))"', local, index.read_text())
index.write_text(re.sub(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"', "", text))
PY
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server -b 127.0.0.1 -d "$work/site" "$port" >/dev/null 2>&1 & server=$!
sleep 1
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --user-data-dir="$work/profile" --virtual-time-budget=20000)
browse() {  # $1 = page fragment; prints the DOM after scripts ran
  "${chrome[@]}" --dump-dom "http://127.0.0.1:$port/$1" 2>/dev/null
}
summary=$(browse "") graph=$(browse "#$bench")
failed=$(grep -c "failed to load" <<<"$summary$graph" || true)
echo "summary page: $(grep -o 'benchmark-container' <<<"$summary" | wc -l) benchmark tiles; load failures: $failed"
echo "graph page $bench: $(grep -o 'class="flot-base"' <<<"$graph" | wc -l) plot canvas(es)," \
  "$(grep -o 'class="legendLabel"' <<<"$graph" | wc -l) legend entries"
{ grep -o 'class="legendLabel">[^<]*' <<<"$graph" | sed 's/.*>/  series: /' | head -20; } || true
if [[ -n ${SCREENSHOT:-} ]]; then
  "${chrome[@]}" --window-size=1400,900 --screenshot="$(realpath -m "$SCREENSHOT")" "http://127.0.0.1:$port/#$bench" \
    2>/dev/null
fi
[[ $failed -eq 0 ]] && grep -q 'class="flot-base"' <<<"$graph"
