#!/usr/bin/env bash
# Run tools/gpu-check.sh phases in the background on a CUDA host, and poll them: the phases run in a
# process session of their own (setsid: they outlive the shell that started them) in a copy of the
# tree without .git; `start` and each `wait` wait for them up to WAIT_S seconds (default 570), print
# the logs' tails and return, so that a caller with a limit per command polls with `wait`.
#   bash tools/gpu-session.sh start SECONDS PHASE... [+ PHASE...]
#                                                      start; the trials phase ends SECONDS from now
#   bash tools/gpu-session.sh wait                     wait again
# Phases after a "+" run at the same time on the second GPU of a two-GPU host: a lane of their own
# (CUDA_VISIBLE_DEVICES=1, its own copy of the tree, work folders under $GPU_SESSION_ROOT/lane1,
# archive gpu-check-lane1.tgz), so that two GPUs do twice the work in the same time (lane 0 sees
# GPU 0 only: the cp phase, which needs both, skips itself). The lanes share the compile cache. Each
# lane holds half of the allowed physical cores (taskset): unpinned, two lanes' processes fought over
# the host (host work between timings took 77 s a process instead of 14-18 s, and the spread of
# host-bound backward points rose from 0.08 to 0.12-0.14 in log).
# The poll in which every lane has ended copies the archives (gpu-check*.tgz) to $OUT; every earlier
# poll leaves what the phases wrote so far in $OUT/partial.tgz, so that a run cut off still leaves them.
# The history phase clones this checkout (ATTNPERF_ORIGIN); commits it lacks can come as a bundle
# (git bundle create .hist/new.bundle START..main, with /.hist/ in .git/info/exclude).
set -uo pipefail
R=${GPU_SESSION_ROOT:-/tmp}  # where gpu-session.sh keeps its copies and files (a test sets it)
S=$R/gpu-session WAIT_S=${WAIT_S:-570}
case ${1:-} in
start)
  shift; deadline=$(( $(date +%s) + $1 )); shift
  lane0=() lane1=(); lane=0
  for arg; do if [[ $arg == + ]]; then lane=1; elif ((lane)); then lane1+=("$arg"); else lane0+=("$arg"); fi; done
  rm -rf "$R/copy" "$R/copy-lane1" "$R/lane1" "$S" && mkdir -p "$R/copy" "$S"
  tar --exclude=./.git -cf - . | tar xf - -C "$R/copy"
  origin=$PWD  # the checkout with .git, for the history phase and TRIALS_COMMIT
  launch() {  # $1 = copy, $2 = lane's OUT, $3 = its done marker, $4 = its CPUs ("" = all), then VAR=VALUE... -- PHASE...
    local copy=$1 out=$2 marker=$3 cpus=$4 vars=(); shift 4
    while [[ $1 != -- ]]; do vars+=("$1"); shift; done; shift
    # the marker is written whatever taskset does: a lane that cannot start still ends
    (cd "$copy" && env "${vars[@]}" PIN_CPUS="$cpus" ATTNPERF_ORIGIN="$origin" DEADLINE_UNIX=$deadline OUT="$out" \
      setsid nohup bash -c '${PIN_CPUS:+taskset -c $PIN_CPUS} bash tools/gpu-check.sh "$@"; echo done > '"$marker" \
      _ "$@" > "$out/log" 2>&1 < /dev/null &)
  }
  if ((${#lane1[@]})); then
    # each lane whole physical cores of the allowed ones, half each (hyperthread siblings kept together)
    mapfile -t cpus < <(python3 - <<'PY'
import os
from pathlib import Path
def core(cpu):
    topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return (topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()
    except OSError:
        return ("", str(cpu))
allowed = sorted(os.sched_getaffinity(0))
cores = list(dict.fromkeys(core(c) for c in allowed))
if len(cores) >= 2:
    halves = (set(cores[: len(cores) // 2]), set(cores[len(cores) // 2 :]))
    for half in halves:
        print(",".join(str(c) for c in allowed if core(c) in half))
PY
)
    if ((${#cpus[@]} != 2)) || ! command -v taskset >/dev/null; then
      echo "gpu-session: the two lanes run unpinned (no taskset, or fewer than two cores)"; cpus=("" "")
    fi
    mkdir -p "$R/copy-lane1" "$S/lane1" "$R/lane1" && cp -a "$R/copy/." "$R/copy-lane1/"  # before lane 0 starts
    launch "$R/copy" "$S" "$S/done" "${cpus[0]}" GPU_LANE=0 CUDA_VISIBLE_DEVICES=0 -- "${lane0[@]}"
    launch "$R/copy-lane1" "$S/lane1" "$S/done-lane1" "${cpus[1]}" GPU_LANE=1 CUDA_VISIBLE_DEVICES=1 \
      WORK_ROOT="$R/lane1" -- "${lane1[@]}"
  else
    launch "$R/copy" "$S" "$S/done" "" GPU_LANE=0 -- "${lane0[@]}"; echo done > "$S/done-lane1"
  fi ;;
wait) ;;
*) sed -n '2,/^set/p' "$0" | grep '^#'; exit 2 ;;
esac
all_done() { [[ -f $S/done && -f $S/done-lane1 ]]; }
for ((i = 0; i < WAIT_S; i += 5)); do all_done && break; sleep 5; done
grep -v USDT "$S/log" | tail -40
if [[ -f $S/lane1/log ]]; then echo "--- lane 1"; grep -v USDT "$S/lane1/log" | tail -30; fi
if all_done; then
  echo "phases done; archives in \$OUT: gpu-check.tgz (and gpu-check-lane1.tgz with a second lane)"
  if [[ -f $S/gpu-check.tgz ]]; then cp "$S/gpu-check.tgz" "${OUT:?}/"; else echo "no gpu-check.tgz: see the log"; fi
  if [[ -f $S/lane1/gpu-check.tgz ]]; then cp "$S/lane1/gpu-check.tgz" "$OUT/gpu-check-lane1.tgz"; fi
else
  # a lane that has ended has packed its raw/ into its gpu-check.tgz (and removed raw/)
  tar czf "${OUT:?}/partial.tgz" -C "$S" log raw gpu-check.tgz lane1/log lane1/raw lane1/gpu-check.tgz \
    /tmp/attnperf-prcheck /tmp/attnperf-trials /tmp/attnperf-calibrate "$R/lane1" 2>/dev/null; echo "still running"
fi
