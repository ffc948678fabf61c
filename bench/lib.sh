# lib.sh - helpers for the benchmarks (sourced).
set -euo pipefail
RUNS=${RUNS:-5}
# median_time CMD... : runs CMD (a command or a shell function) $RUNS times,
# prints the median wall time in seconds; a failing run aborts the bench.
median_time() {
  local i s e times=()
  for ((i = 0; i < RUNS; i++)); do
    s=$(date +%s%N)
    "$@" >/dev/null 2>&1 || { echo "bench: '$*' failed" >&2; return 1; }
    e=$(date +%s%N)
    times+=("$(( (e - s) / 1000 ))")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.3f\n", a[int((NR+1)/2)] / 1e6}'
}
# median_of CMD... : runs CMD $RUNS times; CMD prints one number; prints the median
median_of() {
  local i v=()
  for ((i = 0; i < RUNS; i++)); do v+=("$("$@")"); done
  printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
# corpus directory: $CORPUS, else /work/corpus/images or build/corpus/images
find_corpus() {
  local c
  for c in "${CORPUS:-}" /work/corpus/images build/corpus/images; do
    [ -n "$c" ] && [ -d "$c" ] && ls "$c"/*.raw >/dev/null 2>&1 && { echo "$c"; return 0; }
  done
  return 1
}
