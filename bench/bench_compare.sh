#!/usr/bin/env bash
# bench_compare.sh - two imgdedup binaries (BEFORE and AFTER a change) in the
# same run, interleaved so that the load of a shared machine hits both alike:
#   1. scan of a 1 GiB random raw file (page cache warm, fresh index every
#      run; 2 jobs and --jobs 1) against `openssl dgst -sha256` of that file;
#   2. scan + map of the corpus pair (fresh index every run);
#   3. deploy of TARGET with CACHED in the node cache, from a private nginx on
#      127.0.0.1 (4 connections and --connections 1), against curl of the
#      whole image; bytes and requests from nginx's access log;
#   4. deploy with TARGET itself in the cache, against cp --sparse=always
#      (+ sync, since deploy fsyncs).
# Each binary has its own repository copy (images hard-linked, index written
# by that binary), its own node caches, and a fresh copy of its cache before
# every deploy.  Within one round the order alternates (before first in odd
# rounds, after first in even ones) so that neither side always runs first.
# Prints medians, min-max and, per round, after/before; a phase is reported
# slower or faster only if a sign test over the rounds says so (p < 0.05),
# else "within noise".
#   BEFORE=/path/imgdedup AFTER=/path/imgdedup RUNS=5 bench/bench_compare.sh [TARGET.raw CACHED.raw]
#   CASYNC=1 adds one casync extract --seed (baseline; casync make takes a while)
#   PHASES="deploy full" runs only those (of: scan pair deploy full)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
: "${BEFORE:?set BEFORE=/path/to/imgdedup (the old binary)}"
: "${AFTER:?set AFTER=/path/to/imgdedup (the new binary)}"
RUNS=${RUNS:-5}
CASYNC=${CASYNC:-0}
PHASES=${PHASES:-scan pair deploy full}
CORPUS=${CORPUS:-/work/corpus/images}
TARGET=${1:-debian12-minbase-v2.raw}
CACHED=${2:-debian12-minbase.raw}
for b in "$BEFORE" "$AFTER"; do [ -x "$b" ] || { echo "bench_compare: $b is not executable" >&2; exit 2; }; done
for f in "$TARGET" "$CACHED"; do [ -f "$CORPUS/$f" ] || { echo "bench_compare: $CORPUS/$f not found (set CORPUS)" >&2; exit 2; }; done
# shellcheck source=../tests/e2e/nginx.sh
source "$top/tests/e2e/nginx.sh"

B=$(mktemp -d "${TMPDIR:-/tmp}/idd-bench-compare.XXXXXX")
trap 'nginx_stop; rm -rf "$B"' EXIT
R=$B/results; mkdir -p "$R"
declare -A BIN=([before]=$BEFORE [after]=$AFTER)
want() { [[ " $PHASES " == *" $1 "* ]]; }
sides() { if (( $1 % 2 )); then echo before after; else echo after before; fi; }
now_ns() { date +%s%N; }
rec() { echo "$2" >> "$R/$1"; }
# timed NAME CMD... : one run; wall time in seconds appended to NAME, CPU
# time (user + sys of the command and its threads, 10 ms resolution) to
# NAME.cpu: on a loaded machine wall time mostly measures the scheduler,
# CPU time mostly the work done
timed() {
  local name=$1; shift
  local s e
  s=$(now_ns)
  /usr/bin/time -f '%U %S' -o "$B/cpu" "$@" >/dev/null 2>"$B/err" ||
    { echo "bench_compare: '$*' failed:" >&2; cat "$B/err" >&2; exit 1; }
  e=$(now_ns)
  rec "$name" "$(awk -v a="$s" -v b="$e" 'BEGIN {printf "%.4f", (b - a) / 1e9}')"
  local cpuname=$name.cpu
  case $name in *.before|*.after) cpuname=${name%.*}.cpu.${name##*.};; esac
  rec "$cpuname" "$(awk '{printf "%.2f", $1 + $2}' "$B/cpu")"
}
# timed_http NAME CMD... : timed, plus nginx's bytes and requests for the run
timed_http() {
  nginx_log_reset
  timed "$@"
  rec "$1.bytes" "$(nginx_bytes)"
  rec "$1.reqs" "$(nginx_requests)"
}
fresh_copy() { rm -rf "$2"; cp -a --sparse=always "$1" "$2"; sync; }

echo "== setup in $B"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$B/one"
if want scan; then head -c $((1 << 30)) /dev/urandom > "$B/one/random.raw"; else : > "$B/one/random.raw"; fi
for v in before after; do
  mkdir -p "$B/www/$v"
  for f in "$TARGET" "$CACHED"; do
    ln "$CORPUS/$f" "$B/www/$v/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$B/www/$v/$f"
  done
  "${BIN[$v]}" scan -q "$B/www/$v"
  "${BIN[$v]}" map -q "$B/www/$v"
done
if [ "$CASYNC" = 1 ]; then
  echo "== casync make"
  mkdir -p "$B/www/casync"
  casync make --store="$B/www/casync/store" "$B/www/casync/$TARGET.caibx" "$B/www/before/$TARGET" >/dev/null
fi
nginx_start "$B/www"
for v in before after; do
  # the node: CACHED deployed once by this binary; and a second cache that
  # also holds TARGET, deployed with -o (registered there by absolute path)
  "${BIN[$v]}" deploy --from "$NGINX_URL/$v" --cache "$B/cache0.$v" -q "$CACHED"
  fresh_copy "$B/cache0.$v" "$B/cachefull.$v"
  "${BIN[$v]}" deploy --from "$NGINX_URL/$v" --cache "$B/cachefull.$v" -o "$B/full.$v.raw" -q "$TARGET"
  cmp "$B/www/$v/$TARGET" "$B/full.$v.raw"
done
FULLSRC=$B/full.before.raw
cat "$B/one/random.raw" "$B/www/before/$TARGET" "$B/www/before/$CACHED" > /dev/null   # warm

deploy_run() { # NAME SIDE CACHE-TEMPLATE ARGS...
  local name=$1 v=$2 tmpl=$3; shift 3
  fresh_copy "$tmpl" "$B/c"
  rm -f "$B/out"
  timed_http "$name" "${BIN[$v]}" deploy --from "$NGINX_URL/$v" --cache "$B/c" -o "$B/out" -q "$@" "$TARGET"
  cmp "$B/www/$v/$TARGET" "$B/out"
  rm -f "$B/out"
}

for ((i = 1; i <= RUNS; i++)); do
  echo "== round $i of $RUNS ($(sides "$i")), load $(cut -d' ' -f1 /proc/loadavg)"
  if want scan; then
    # 1. scan of the cached 1 GiB random file against openssl
    timed openssl openssl dgst -sha256 "$B/one/random.raw"
    t_ssl=$(tail -n1 "$R/openssl")
    for v in $(sides "$i"); do
      rm -rf "$B/idx.$v"; sync
      timed "scan.$v" "${BIN[$v]}" scan -q --index "$B/idx.$v" "$B/one"
      rec "ratio.$v" "$(awk -v a="$t_ssl" -v b="$(tail -n1 "$R/scan.$v")" 'BEGIN {printf "%.3f", a / b}')"
      rm -rf "$B/idx.$v"; sync
      timed "scan1.$v" "${BIN[$v]}" scan -q --jobs 1 --index "$B/idx.$v" "$B/one"
      rec "ratio1.$v" "$(awk -v a="$t_ssl" -v b="$(tail -n1 "$R/scan1.$v")" 'BEGIN {printf "%.3f", a / b}')"
    done
  fi
  if want pair; then
    # 2. scan + map of the corpus pair, fresh index
    for v in $(sides "$i"); do
      rm -rf "$B/idx.$v"; sync
      timed "pairscan.$v" "${BIN[$v]}" scan -q --index "$B/idx.$v" "$B/www/$v"
      timed "pairmap.$v" "${BIN[$v]}" map -q --index "$B/idx.$v" "$B/www/$v"
    done
    rm -rf "$B/idx.before" "$B/idx.after"
  fi
  if want deploy; then
    # 3. deploy with CACHED in the cache, against curl
    for v in $(sides "$i"); do
      deploy_run "deploy.$v" "$v" "$B/cache0.$v"
      deploy_run "deploy1.$v" "$v" "$B/cache0.$v" --connections 1
    done
    rm -f "$B/out.curl"; sync
    timed_http curl curl -s -f -o "$B/out.curl" "$NGINX_URL/before/$TARGET"
    cmp "$B/www/before/$TARGET" "$B/out.curl"; rm -f "$B/out.curl"
    if [ "$CASYNC" = 1 ] && [ "$i" = 1 ]; then
      rm -f "$B/out.casync"; sync
      timed_http casync casync extract --store="$NGINX_URL/casync/store" --seed="$B/cache0.before/images/$CACHED" \
        "$NGINX_URL/casync/$TARGET.caibx" "$B/out.casync"
      cmp "$B/www/before/$TARGET" "$B/out.casync"; rm -f "$B/out.casync"
    fi
  fi
  if want full; then
    # 4. fully cached deploy, against cp (+ sync)
    for v in $(sides "$i"); do
      deploy_run "full.$v" "$v" "$B/cachefull.$v"
    done
    rm -f "$B/out.cp"; sync
    timed cp cp --sparse=always "$FULLSRC" "$B/out.cp"
    rm -f "$B/out.cp"; sync
    # shellcheck disable=SC2016 # positional parameters of the inner shell
    timed cp_sync sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' sh "$FULLSRC" "$B/out.cp"
    cmp "$B/www/before/$TARGET" "$B/out.cp"; rm -f "$B/out.cp"
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- summary ----
stat3() { # FILE -> "median min max" (median of an even count: mean of the middle two)
  sort -g "$1" | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; print m, a[1], a[NR]}'
}
fmt() { # FILE DIGITS -> "median (min-max)"
  stat3 "$1" | awk -v d="$2" '{printf "%.*f (%.*f-%.*f)", d, $1, d, $2, d, $3}'
}
paired() { # NAME [slower|higher] -> "after/before per round: median (min-max)|verdict"
  # verdict: sign test over the rounds (two-sided, exact binomial); "within
  # noise" unless p < 0.05, i.e. all but a few rounds agree on the direction
  paste "$R/$1.before" "$R/$1.after" | awk '{print ($1 > 0) ? $2 / $1 : 1}' > "$R/$1.pair"
  local st; st=$(stat3 "$R/$1.pair")
  awk -v st="$st" -v word="${2:-slower}" '{ n++; if ($1 > 1) up++; else if ($1 < 1) down++ }
    END {
      k = (up > down) ? up : down; m = up + down; p = 0
      for (i = k; i <= m; i++) { c = 1; for (j = 0; j < i; j++) c = c * (m - j) / (j + 1); p += c / 2 ^ m }
      p = (2 * p > 1) ? 1 : 2 * p
      split(st, s, " ")
      if (word == "slower") w = (up > down) ? "after slower" : "after faster"
      else w = (up > down) ? "after higher" : "after lower"
      if (p < 0.05) v = sprintf("%s in %d of %d rounds (sign test p=%.3f)", w, k, n, p)
      else v = sprintf("within noise (%d of %d rounds slower, p=%.2f)", (word == "slower") ? up : down, n, p)
      printf "%.3f (%.3f-%.3f)|%s", s[1], s[2], s[3], v }' "$R/$1.pair"
}
row() { # LABEL NAME DIGITS [higher-word]; nothing for a phase not run
  [ -s "$R/$2.before" ] || return 0
  local p; p=$(paired "$2" "${4:-slower}")
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$(fmt "$R/$2.before" "$3")" "$(fmt "$R/$2.after" "$3")" "${p%%|*}" "${p#*|}"
}
base() { [ -s "$R/$2" ] || return 0; printf '| %s | %s | | | baseline |\n' "$1" "$(fmt "$R/$2" "$3")"; }
num() { stat3 "$1" | awk '{ if ($2 == $3) printf "%d", $1; else printf "%d (%d-%d)", $1, $2, $3 }'; }

echo
echo "before: $BEFORE"
echo "after:  $AFTER"
echo "$TARGET with $CACHED cached; $RUNS rounds; seconds unless noted; median (min-max)"
echo
echo "| phase | before | after | after/before per round | verdict |"
echo "|---|---:|---:|---:|---|"
base "openssl dgst -sha256, 1 GiB random, cached" openssl 3
row "scan 1 GiB random (2 jobs)" scan 3
row "scan 1 GiB random, ratio openssl/scan (higher is better)" ratio 2 higher
row "scan --jobs 1 1 GiB random" scan1 3
row "scan --jobs 1, ratio openssl/scan (higher is better)" ratio1 2 higher
row "scan of the corpus pair, fresh index" pairscan 3
row "map of the corpus pair" pairmap 3
base "curl of the whole image" curl 3
[ -s "$R/casync" ] && base "casync extract --seed (one run)" casync 3
row "deploy, $CACHED cached (4 connections)" deploy 3
row "deploy --connections 1" deploy1 3
base "cp --sparse=always" cp 3
base "cp --sparse=always + sync" cp_sync 3
row "deploy, fully cached" full 3
echo
echo "CPU time (user + sys, seconds), same runs:"
echo
echo "| phase | before | after | after/before per round | verdict |"
echo "|---|---:|---:|---:|---|"
base "openssl dgst -sha256" openssl.cpu 2
row "scan 1 GiB random (2 jobs)" scan.cpu 2
row "scan --jobs 1 1 GiB random" scan1.cpu 2
row "scan of the corpus pair" pairscan.cpu 2
row "map of the corpus pair" pairmap.cpu 2
row "deploy, $CACHED cached (4 connections)" deploy.cpu 2
row "deploy --connections 1" deploy1.cpu 2
row "deploy, fully cached" full.cpu 2
echo
echo "| transfer (nginx log) | before bytes | before requests | after bytes | after requests |"
echo "|---|---:|---:|---:|---:|"
for n in deploy deploy1 full; do
  [ -s "$R/$n.before.bytes" ] || continue
  printf '| %s | %s | %s | %s | %s |\n' "$n" "$(num "$R/$n.before.bytes")" "$(num "$R/$n.before.reqs")" \
    "$(num "$R/$n.after.bytes")" "$(num "$R/$n.after.reqs")"
done
[ -s "$R/curl.bytes" ] && printf '| curl | %s | %s | | |\n' "$(num "$R/curl.bytes")" "$(num "$R/curl.reqs")"
[ -s "$R/casync" ] && printf '| casync | %s | %s | | |\n' "$(num "$R/casync.bytes")" "$(num "$R/casync.reqs")"
echo
echo "raw per-round values:"
for f in "$R"/*; do
  case $f in *.pair) continue;; esac
  printf '  %-22s %s\n' "$(basename "$f")" "$(tr '\n' ' ' < "$f")"
done
