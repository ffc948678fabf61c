#!/usr/bin/env bash
# check-summary.sh RESULTS - make check's last line: the sums of what each
# runner reported (lines "KIND PASSED FAILED"), by kind and in all.  Exit 1
# when anything failed, or when an expected kind reported nothing.
set -euo pipefail
f=$1
[ -s "$f" ] || { echo "check: no results recorded in $f" >&2; exit 1; }
awk '
  NF == 3 { p[$1] += $2; x[$1] += $3; n[$1]++; P += $2; F += $3 }
  END {
    split("unit e2e fuzz install-check", want, " ")
    for (i in want) if (!(want[i] in n)) { printf "check: no %s results recorded\n", want[i] > "/dev/stderr"; F++ }
    line = ""
    for (k in p) line = line sprintf("%s %d/%d, ", k, p[k], p[k] + x[k])
    printf "check: %d passed, %d failed (%s)\n", P, F, substr(line, 1, length(line) - 2)
    exit F > 0
  }' "$f"
