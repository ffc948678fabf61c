#!/usr/bin/env bash
# run-unit.sh RESULTS TEST... - run the cmocka suites, several at once, and
# count what cmocka itself reported: the tests each suite says passed and
# failed.  A suite that exits non-zero without a cmocka summary (a crash, a
# sanitizer report) counts as one failure.  Each suite's output is kept in
# LOGDIR (default: beside the first binary, unit-logs/); failures are shown.
# Appends one line "unit PASSED FAILED" to RESULTS (a file; - for none).
set -u
results=$1; shift
[ $# -gt 0 ] || { echo "run-unit.sh: no suites" >&2; exit 2; }
logs=${UNIT_LOG_DIR:-$(dirname "$(dirname "$1")")/unit-logs}
mkdir -p "$logs"
jobs=${UNIT_JOBS:-$(nproc)}

# one suite: its log, then a line "PASSED FAILED" in LOG.count
run_one() {
  local t=$1 log=$2 rc p f
  "$t" > "$log" 2>&1; rc=$?
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$rc" -eq 0 ] && [ "$f" -ne 0 ]; then rc=1; fi
  if [ "$rc" -eq 0 ] && [ "$p" -eq 0 ]; then f=1; echo "run-unit.sh: $t ran no test" >> "$log"; fi
  echo "$p $f" > "$log.count"
}
export -f run_one

for t in "$@"; do
  name=$(basename "$(dirname "$t")")_$(basename "$t")
  printf '%s\0%s\0' "$t" "$logs/$name.log"
done | xargs -0 -n 2 -P "$jobs" bash -c 'run_one "$0" "$1"'

pass=0 fail=0
for t in "$@"; do
  name=$(basename "$(dirname "$t")")_$(basename "$t")
  log=$logs/$name.log
  read -r p f < "$log.count" 2>/dev/null || { p=0; f=1; }
  pass=$((pass + p)); fail=$((fail + f))
  if [ "$f" -ne 0 ]; then
    echo "FAIL $t ($p passed, $f failed; log $log)"
    tail -n 40 "$log" | sed 's/^/    /'
  else
    echo "ok   $t ($p tests)"
  fi
done
echo "unit: $pass passed, $fail failed"
[ "$results" = - ] || echo "unit $pass $fail" >> "$results"
[ "$fail" -eq 0 ]
