#!/usr/bin/env bash
# bench_serve.sh - a VM boots and runs a workload (its /init md5sums every
# file under /usr/bin: what starting programs reads) from a corpus image
# whose sibling the node already holds, the repository served by nginx at
# 100 Mbit/s per connection (limit_rate 12500k).  Methods:
#   serve        imgdedup serve, sibling cached (with --record)
#   serve again  a second boot on the same cache
#   prefetch     imgdedup serve --prefetch (the profile recorded above), sibling cached
#   deploy+boot  imgdedup deploy, sibling cached, then boot the local file
#   curl+cache   nbdkit curl plugin with its cache filter (cache-on-read), at
#                the default cache block size (64K) and at 4K
#   local file   boot from the image on local disk (the floor)
# Reported: bytes nginx sent and requests it answered (index files
# included), seconds from starting the method to the guest's marker, and
# for serve the payload fetched against the ideal (the distinct blocks the
# guest read that the cache lacked, from the recorded profile's digests);
# medians of RUNS (3) runs.  Skips cleanly without the corpus.
#   IMGDEDUP=build/imgdedup RUNS=3 bench/bench_serve.sh
#   BENCH_SERVE_PACK=1: the repository also gets a pack; the serve rows then
#   read it, and a row "serve --no-pack" boots without it.
#   BENCH_SERVE_ONLY_SERVE=1: only the serve rows (no deploy, curl, floor).
#   BENCH_SERVE_FILES: the corpus files put in the repository (default the
#   three raw images), for other BENCH_SERVE_PAIRS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
export IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-/work/corpus/images}
GUEST_DIR_READ=${BENCH_GUEST_DIR:-usr/bin}
PAIRS=${BENCH_SERVE_PAIRS:-"debian12-minbase-v2.raw:debian12-minbase.raw debian12-web.raw:debian12-minbase.raw"}
FILES=${BENCH_SERVE_FILES:-debian12-minbase.raw debian12-minbase-v2.raw debian12-web.raw}
for f in $FILES; do
  [ -f "$CORPUS/$f" ] || { echo "bench_serve: $CORPUS/$f missing (see /work/shared/corpus): skipped"; exit 0; }
done
for c in qemu-system-x86_64 nbdkit nbdinfo nginx; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || { echo "bench_serve: $c missing: skipped"; exit 0; }
done
[ -f "$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so" ] || { echo "bench_serve: no plugin next to $IMGDEDUP"; exit 1; }

export TMPDIR=${BENCH_DIR:-/var/tmp/imgdedup-bench}
mkdir -p "$TMPDIR"
source "$top/tests/e2e/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
guest_prepare
export GUEST_APPEND="imgdedup.dir=$GUEST_DIR_READ"

REPO=$WORK/repo
mkdir -p "$REPO"
for f in $FILES; do
  ln "$CORPUS/$f" "$REPO/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$REPO/$f"
done
echo "== indexing (scan + map)"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
[ -n "${BENCH_SERVE_PACK:-}" ] && "$IMGDEDUP" pack -q "$REPO"
NGINX_LIMIT_RATE=12500k nginx_start "$REPO"
URL=$NGINX_URL

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
declare -A T BYTES REQS RATIO
note() { # METHOD SECONDS: bytes and requests from nginx's log
  T[$1]+="$2 "
  BYTES[$1]+="$(nginx_bytes) "
  REQS[$1]+="$(nginx_requests) "
}
boot_or_die() { guest_boot "$@" > "$WORK/boot.out" || { cat "$WORK/boot.out"; fail "boot failed: $1"; }; }

nbdkit_curl() { # SOCK BLOCKSIZE|"" URL
  local bsarg=()
  [ -n "$2" ] && bsarg=(cache-min-block-size="$2")
  nbdkit -r -f --exit-with-parent -U "$1" -P "$1.pid" --filter=cache curl "$3" \
    cache-on-read=true "${bsarg[@]}" 2> "$1.err" &
  CURL_PID=$!
  for _ in $(seq 100); do [ -s "$1.pid" ] && return 0; sleep 0.1; done
  fail "nbdkit curl did not start: $(cat "$1.err")"
}

for pair in $PAIRS; do
  TARGET=${pair%%:*} CACHED=${pair#*:}
  echo "== $TARGET with $CACHED cached, guest reads /$GUEST_DIR_READ"
  rm -rf "$WORK/cache0"
  "$IMGDEDUP" deploy -q --from "$REPO" --cache "$WORK/cache0" "$CACHED"
  T=() BYTES=() REQS=() RATIO=()
  for run in $(seq "$RUNS"); do
    rm -rf "$WORK/c" && cp -a --sparse=always "$WORK/cache0" "$WORK/c" && sync
    # serve, cold but for the sibling; recording the boot profile
    nginx_log_reset; t0=$(now)
    serve_start s1 --from "$URL" --cache "$WORK/c" --record "$WORK/profile" "$TARGET"
    t1=$(now)
    boot_or_die "file=nbd:unix:$WORK/s1.sock:exportname=$TARGET,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
    serve_stop s1
    note serve "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
    # the ideal: the distinct blocks the guest read that the cache lacked
    IDEAL=$(python3 - "$WORK/profile" <("$IMGDEDUP" info --blocks "$REPO" "$CACHED") <<'PY'
import sys
have = set(l.strip() for l in open(sys.argv[2]))
read = set(l.rstrip("\n").split("\t")[2] for l in open(sys.argv[1])
           if not l.startswith("#") and l.count("\t") == 2)
print(4096 * len(read - have))
PY
)
    RATIO[serve]+="$(awk -v f="$(serve_stat s1 bytes_fetched)" -v i="$IDEAL" 'BEGIN {printf "%.2f", i ? f / i : 0}') "
    if [ -n "${BENCH_SERVE_PACK:-}" ]; then # the same boot, without the pack
      rm -rf "$WORK/c4" && cp -a --sparse=always "$WORK/cache0" "$WORK/c4" && sync
      nginx_log_reset; t0=$(now)
      serve_start s4 --from "$URL" --cache "$WORK/c4" --no-pack "$TARGET"
      t1=$(now)
      boot_or_die "file=nbd:unix:$WORK/s4.sock:exportname=$TARGET,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
      serve_stop s4
      note serve_nopack "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
      rm -rf "$WORK/c4"
    fi
    if [ -n "${BENCH_SERVE_ONLY_SERVE:-}" ]; then echo "run $run done"; continue; fi
    # a second boot on the same cache
    nginx_log_reset; t0=$(now)
    serve_start s2 --from "$URL" --cache "$WORK/c" "$TARGET"
    t1=$(now)
    boot_or_die "file=nbd:unix:$WORK/s2.sock:exportname=$TARGET,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
    serve_stop s2
    note serve_again "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
    # the recorded profile prefetched, sibling cached
    rm -rf "$WORK/c" && cp -a --sparse=always "$WORK/cache0" "$WORK/c" && sync
    nginx_log_reset; t0=$(now)
    serve_start s3 --from "$URL" --cache "$WORK/c" --prefetch "$WORK/profile" "$TARGET"
    t1=$(now)
    boot_or_die "file=nbd:unix:$WORK/s3.sock:exportname=$TARGET,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
    serve_stop s3
    note prefetch "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
    # deploy, then boot the local copy
    rm -rf "$WORK/c" && cp -a --sparse=always "$WORK/cache0" "$WORK/c" && sync
    nginx_log_reset; t0=$(now)
    "$IMGDEDUP" deploy -q --from "$URL" --cache "$WORK/c" -o "$WORK/deployed.raw" "$TARGET"
    t1=$(now)
    boot_or_die "file=$WORK/deployed.raw,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
    note deploy "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
    rm -f "$WORK/deployed.raw"
    # nbdkit curl + cache filter, default and 4K cache blocks
    for bs in "" 4K; do
      nginx_log_reset; t0=$(now)
      nbdkit_curl "$WORK/curl.sock" "$bs" "$URL/$TARGET"
      t1=$(now)
      boot_or_die "file=nbd:unix:$WORK/curl.sock,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
      kill "$CURL_PID"; wait "$CURL_PID" || true
      rm -f "$WORK/curl.sock" "$WORK/curl.sock.pid"
      note "curl${bs:-64K}" "$(awk -v a="$(elapsed "$t0" "$t1")" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f", a + s}')"
    done
    # the floor: the image on local disk
    nginx_log_reset
    boot_or_die "file=$REPO/$TARGET,format=raw,if=virtio,readonly=on" "$WORK/boot.log"
    note local "$GUEST_SECS"
    echo "run $run done"
  done
  printf '\n%s with %s cached, guest reads /%s, %s runs (medians)\n' "$TARGET" "$CACHED" "$GUEST_DIR_READ" "$RUNS"
  printf '%-44s %14s %9s %12s\n' "method" "bytes sent" "requests" "s to marker"
  [ -n "${RATIO[serve]:-}" ] && printf 'imgdedup serve: bytes fetched / the ideal (distinct blocks read the cache lacked): %s\n' \
    "$(tr ' ' '\n' <<<"${RATIO[serve]}" | grep . | median)"
  for m in serve serve_nopack serve_again prefetch deploy curl64K curl4K local; do
    [ -n "${BYTES[$m]:-}" ] || continue
    case $m in
      serve) label="imgdedup serve (sibling cached)${BENCH_SERVE_PACK:+, pack}";;
      serve_nopack) label="imgdedup serve --no-pack (sibling cached)";;
      serve_again) label="imgdedup serve, second boot";;
      prefetch) label="imgdedup serve --prefetch (sibling cached)";;
      deploy) label="imgdedup deploy, then boot the local file";;
      curl64K) label="nbdkit curl + cache filter (64K blocks)";;
      curl4K) label="nbdkit curl + cache filter (4K blocks)";;
      local) label="local file (floor)";;
    esac
    printf '%-44s %14s %9s %12s\n' "$label" \
      "$(tr ' ' '\n' <<<"${BYTES[$m]}" | grep . | median)" \
      "$(tr ' ' '\n' <<<"${REQS[$m]}" | grep . | median)" \
      "$(tr ' ' '\n' <<<"${T[$m]}" | grep . | median)"
  done
done
