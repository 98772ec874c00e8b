#!/usr/bin/env bash
# The pull-request check's calibration and error rates on a CUDA host, in phases that outlive one shell:
# the trial pool runs in the background (its own session), and later phases wait for it and evaluate it.
#
#   tools/gpu-trials.sh start DIR BUDGET_S [attnperf trials flags…]   start the pool (attnperf trials), return
#   tools/gpu-trials.sh wait DIR SECONDS                               wait up to SECONDS; exit 0 once the pool ended
#   tools/gpu-trials.sh report DIR OUT [attnperf trials flags…]        evaluate the pool again (--reuse) into OUT:
#                                                                      regress-trials.json, noise.json, processes.tar.xz
#                                                                      (tools/pack-processes.py: small enough for measurements/)
#
# ATTNPERF_GPU_ENV, when set, is sourced first (an environment that provides the GPU libraries).
# Run from the repository root; every process measures this checkout's code.
set -euo pipefail
[[ -n ${ATTNPERF_GPU_ENV:-} ]] && source "$ATTNPERF_GPU_ENV"
phase=${1:?start, wait or report}
dir=${2:?the folder of the pool}
case $phase in
  start)
    budget=${3:?budget in seconds}; shift 3
    mkdir -p "$dir/pool"
    rm -f "$dir/exit-code"
    setsid nohup bash -c 'python3 -m attnperf trials --workdir "$0/pool" --out "$0/regress-trials.json" \
      --budget-s "$1" "${@:2}" > "$0/trials.log" 2>&1; echo $? > "$0/exit-code"' "$dir" "$budget" "$@" \
      < /dev/null > /dev/null 2>&1 &
    echo "started the trial pool in $dir (log: $dir/trials.log)";;
  wait)
    limit=${3:?seconds}
    end=$((SECONDS + limit))
    while [[ ! -f $dir/exit-code && $SECONDS -lt $end ]]; do
      sleep 15
      echo "$(date +%T) $(ls "$dir/pool"/trial-*.json 2>/dev/null | wc -l) processes; $(tail -n 1 "$dir/trials.log" 2>/dev/null)"
    done
    if [[ -f $dir/exit-code ]]; then echo "pool ended: exit $(cat "$dir/exit-code")"; tail -n 30 "$dir/trials.log"; exit 0; fi
    echo "pool still running"; exit 3;;
  report)
    out=${3:?output folder}; shift 3
    mkdir -p "$out"
    python3 -m attnperf trials --reuse --workdir "$dir/pool" --out "$out/regress-trials.json" \
      --noise-out "$out/noise.json" "$@"
    python3 "$(dirname "$0")/pack-processes.py" "$out/processes.tar.xz" "$dir"/pool/trial-*.json "$dir/pool/points.json"
    cp "$dir/trials.log" "$out/trials.log";;
  *) echo "unknown phase $phase: start, wait or report" >&2; exit 2;;
esac
