#!/usr/bin/env bash
# Run tools/gpu-check.sh phases on the lent GPU for longer than one call's 10 minutes: they run in a
# process session of their own (which outlives the call) in a copy of the tree without .git, and
# each call waits for them up to WAIT_S. Calls must follow each other within the machine's idle
# release (30 s), or it is given back with the job.
#   bash tools/gpu-session.sh start SECONDS PHASE...   start; the trials phase ends SECONDS from now
#   bash tools/gpu-session.sh wait                     wait again
# The call in which the phases end copies their archive (gpu-check.tgz) to $OUT; every earlier call
# brings back what the phases wrote so far ($OUT/partial.tgz), since a machine given back between
# calls takes the job and its files with it.
# The device's .git is the session's starting commit, not the working tree's: for the history phase,
# carry the newer commits as a bundle (git bundle create .hist/new.bundle START..main, with /.hist/
# in .git/info/exclude, and carry .hist).
set -uo pipefail
S=/tmp/gpu-session WAIT_S=${WAIT_S:-570}
case ${1:-} in
start)
  shift; deadline=$(( $(date +%s) + $1 )); shift
  rm -rf /tmp/copy "$S" && mkdir -p /tmp/copy "$S"
  tar --exclude=./.git -cf - . | tar xf - -C /tmp/copy
  origin=$PWD  # the checkout with .git, for the history phase
  (cd /tmp/copy && ATTNPERF_ORIGIN=$origin DEADLINE_UNIX=$deadline OUT=$S setsid nohup bash -c \
    'bash tools/gpu-check.sh "$@"; echo done > /tmp/gpu-session/done' _ "$@" > "$S/log" 2>&1 < /dev/null &) ;;
wait) ;;
*) sed -n '2,/^set/p' "$0" | grep '^#'; exit 2 ;;
esac
for ((i = 0; i < WAIT_S; i += 5)); do [[ -f $S/done ]] && break; sleep 5; done
grep -v USDT "$S/log" | tail -60
if [[ -f $S/done ]]; then cp "$S/gpu-check.tgz" "${OUT:?}/" && echo "phases done; archive in \$OUT"
else tar czf "${OUT:?}/partial.tgz" -C "$S" log raw /tmp/attnperf-prcheck /tmp/attnperf-trials 2>/dev/null; echo "still running"; fi
