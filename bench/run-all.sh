#!/usr/bin/env bash
# Runs every bench/bench_*.sh (or those named: bench/run-all.sh scan deploy);
# compare (two binaries, BEFORE and AFTER) runs only when named.
# Figures are medians of several runs, each against a baseline measured in
# the same run; see docs/performance.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${IMGDEDUP:?set IMGDEDUP to the binary}"
export IMGDEDUP BENCH_DIR=${BENCH_DIR:-/var/tmp/imgdedup-bench}
export CORPUS=${CORPUS:-}
mkdir -p "$BENCH_DIR"
sel=("$@")
for b in "$here"/bench_*.sh; do
  name=$(basename "$b" .sh); name=${name#bench_}
  if [ ${#sel[@]} -gt 0 ] && [[ ! " ${sel[*]} " == *" $name "* ]]; then continue; fi
  # compare needs two binaries (BEFORE, AFTER): run only when named
  if [ "$name" = compare ] && [[ ! " ${sel[*]} " == *" compare "* ]]; then continue; fi
  echo "### bench: $name"
  bash "$b"
done
