#!/usr/bin/env bash
# bench_deploy.sh - deploy of a corpus image with its nearest sibling cached,
# served by a private nginx on 127.0.0.1, beside (a) curl of the whole image
# and (b) casync with the sibling as seed; then a deploy from a fully cached
# image beside cp.  Medians of RUNS runs; bytes and requests from nginx's
# access log ($body_bytes_sent).  Page cache warm for every tool.
#   IMGDEDUP=build/imgdedup RUNS=5 bench/bench_deploy.sh [TARGET.raw CACHED.raw]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
RUNS=${RUNS:-5}
CORPUS=${CORPUS:-/work/corpus/images}
TARGET=${1:-debian12-minbase-v2.raw}
CACHED=${2:-debian12-minbase.raw}
source "$top/tests/e2e/nginx.sh"

B=$(mktemp -d "${TMPDIR:-/tmp}/idd-bench-deploy.XXXXXX")
trap 'nginx_stop; rm -rf "$B"' EXIT
mkdir -p "$B/repo"
for f in "$TARGET" "$CACHED"; do
  ln "$CORPUS/$f" "$B/repo/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$B/repo/$f"
done
echo "== indexing (scan + map)"
"$IMGDEDUP" scan -q "$B/repo"
"$IMGDEDUP" map -q "$B/repo"
echo "== casync make (chunk store, default chunking and compression)"
mkdir -p "$B/repo/casync"
casync make --store="$B/repo/casync/store" "$B/repo/casync/$TARGET.caibx" "$B/repo/$TARGET" >/dev/null

nginx_start "$B/repo"
URL=$NGINX_URL

# The node: a cache holding CACHED, deployed once; copied fresh for every run.
"$IMGDEDUP" deploy --from "$URL" --cache "$B/cache0" -q "$CACHED"
SEED=$B/cache0/images/$CACHED

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
declare -A T BYTES REQS
run() { # NAME CMD... : one timed run, with nginx bytes/requests
  local name=$1; shift
  nginx_log_reset
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>"$B/err" || { cat "$B/err" >&2; exit 1; }
  t1=$(now)
  T[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}') "
  BYTES[$name]+="$(nginx_bytes) "
  REQS[$name]+="$(nginx_requests) "
}

for i in $(seq "$RUNS"); do
  rm -rf "$B/c" "$B/out"*; cp -a --sparse=always "$B/cache0" "$B/c"
  sync
  run imgdedup "$IMGDEDUP" deploy --from "$URL" --cache "$B/c" -o "$B/out.idd" -q "$TARGET"
  cmp "$B/repo/$TARGET" "$B/out.idd"
  rm -rf "$B/c"; cp -a --sparse=always "$B/cache0" "$B/c"
  run imgdedup_c1 "$IMGDEDUP" deploy --from "$URL" --cache "$B/c" -o "$B/out.idd1" --connections 1 -q "$TARGET"
  rm -rf "$B/c"; cp -a --sparse=always "$B/cache0" "$B/c"
  run curl curl -s -f -o "$B/out.curl" "$URL/$TARGET"
  run casync casync extract --store="$URL/casync/store" --seed="$SEED" "$URL/casync/$TARGET.caibx" "$B/out.casync"
  cmp "$B/repo/$TARGET" "$B/out.casync"
  rm -f "$B/out.idd" "$B/out.idd1" "$B/out.curl" "$B/out.casync"
  # fully cached: TARGET itself in the cache, against cp (+ sync: deploy fsyncs)
  "$IMGDEDUP" deploy --from "$URL" --cache "$B/c" -o "$B/full.src" -q --force "$TARGET"
  run full_deploy "$IMGDEDUP" deploy --from "$URL" --cache "$B/c" -o "$B/out.full" -q "$TARGET"
  cmp "$B/repo/$TARGET" "$B/out.full"
  run cp cp --sparse=always "$B/full.src" "$B/out.cp"
  run cp_sync sh -c "cp --sparse=always '$B/full.src' '$B/out.cp2' && sync '$B/out.cp2'"
  rm -f "$B/out.full" "$B/out.cp" "$B/out.cp2" "$B/full.src"
done

printf '\n%s with %s cached, %s runs (medians)\n' "$TARGET" "$CACHED" "$RUNS"
printf '%-34s %14s %9s %9s\n' "method" "bytes sent" "requests" "seconds"
for name in imgdedup imgdedup_c1 curl casync full_deploy cp cp_sync; do
  label=$name
  case $name in
    imgdedup) label="imgdedup deploy (4 connections)";;
    imgdedup_c1) label="imgdedup deploy --connections 1";;
    curl) label="curl (whole image)";;
    casync) label="casync extract --seed";;
    full_deploy) label="imgdedup deploy, fully cached";;
    cp) label="cp --sparse=always";;
    cp_sync) label="cp --sparse=always + sync";;
  esac
  printf '%-34s %14s %9s %9.3f\n' "$label" \
    "$(tr ' ' '\n' <<<"${BYTES[$name]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${REQS[$name]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${T[$name]}" | grep . | median)"
done
echo "(imgdedup's bytes and requests include its catalog and block map)"
