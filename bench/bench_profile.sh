#!/usr/bin/env bash
# bench_profile.sh - what a published boot profile saves a node that holds
# nothing yet.  A VM boots debian12-minbase-v2.raw (its /init md5sums every
# file under /usr/bin) from imgdedup serve on an empty cache, the
# repository behind nginx at 100 Mbit/s per connection (limit_rate), with:
#   none       no profile published (--no-profile)
#   borrowed   only debian12-minbase.raw's boot profile published: serve
#              borrows it by content for the image never booted
#   own        debian12-minbase-v2.raw's own profile published
# Reported: bytes nginx sent, requests, seconds from starting serve to the
# guest's marker, and how many of the guest's read bytes were already in
# the node cache when read (bytes_from_cache: the prefetch's work); medians
# of RUNS (3).  Skips cleanly without the corpus.
#   IMGDEDUP=build/imgdedup RUNS=3 bench/bench_profile.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
export IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-/work/corpus/images}
TARGET=debian12-minbase-v2.raw DONOR=debian12-minbase.raw
for f in $TARGET $DONOR; do
  [ -f "$CORPUS/$f" ] || { echo "bench_profile: $CORPUS/$f missing (see /work/shared/corpus): skipped"; exit 0; }
done
for c in qemu-system-x86_64 nbdkit nginx; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || { echo "bench_profile: $c missing: skipped"; exit 0; }
done
export TMPDIR=${BENCH_DIR:-/var/tmp/imgdedup-bench}
mkdir -p "$TMPDIR"
source "$top/tests/e2e/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
guest_prepare
export GUEST_APPEND="imgdedup.dir=usr/bin"

REPO=$WORK/repo
mkdir -p "$REPO"
for f in $TARGET $DONOR; do
  ln "$CORPUS/$f" "$REPO/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$REPO/$f"
done
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
NGINX_LIMIT_RATE=12500k nginx_start "$REPO"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
boot() { # NAME IMAGE SERVE-ARGS...: one cold boot; prints seconds to the marker
  local name=$1 img=$2 t0 t1; shift 2
  rm -rf "$WORK/c-$name"
  nginx_log_reset; t0=$(now)
  serve_start "$name" --from "$NGINX_URL" --cache "$WORK/c-$name" "$@" "$img"
  t1=$(now)
  guest_boot "file=nbd:unix:$WORK/$name.sock:exportname=$img,format=raw,if=virtio,readonly=on" \
    "$WORK/boot.log" > "$WORK/boot.out" || { cat "$WORK/boot.out"; fail "boot failed: $name"; }
  serve_stop "$name"
  awk -v a="$t0" -v b="$t1" -v s="$GUEST_SECS" 'BEGIN {printf "%.2f\n", b - a + s}'
}

# record the boots the profiles come from (cold, no profile)
for img in $DONOR $TARGET; do
  boot rec "$img" --no-profile --record "$WORK/$img.profile" >/dev/null
done
declare -A T BYTES REQS LOCAL
for run in $(seq "$RUNS"); do
  for m in none borrowed own; do
    "$IMGDEDUP" profile remove -q $DONOR "$REPO" 2>/dev/null || true
    "$IMGDEDUP" profile remove -q $TARGET "$REPO" 2>/dev/null || true
    args=()
    case $m in
      none) args=(--no-profile);;
      borrowed) "$IMGDEDUP" profile publish -q "$WORK/$DONOR.profile" $DONOR "$REPO";;
      own) "$IMGDEDUP" profile publish -q "$WORK/$TARGET.profile" $TARGET "$REPO";;
    esac
    s=$(boot "$m" $TARGET "${args[@]}")
    T[$m]+="$s "
    BYTES[$m]+="$(nginx_bytes) "
    REQS[$m]+="$(nginx_requests) "
    LOCAL[$m]+="$(serve_stat "$m" bytes_from_cache) "
  done
  echo "run $run done"
done
printf '\n%s booted on an empty node, 100 Mbit/s, %s runs (medians)\n' $TARGET "$RUNS"
printf '%-46s %12s %9s %12s %16s\n' "published profile" "bytes sent" "requests" "s to marker" "read prefetched"
for m in none borrowed own; do
  case $m in
    none) label="none (--no-profile)";;
    borrowed) label="only $DONOR's (borrowed)";;
    own) label="its own";;
  esac
  printf '%-46s %12s %9s %12s %16s\n' "$label" \
    "$(tr ' ' '\n' <<<"${BYTES[$m]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${REQS[$m]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${T[$m]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${LOCAL[$m]}" | grep . | median)"
done
