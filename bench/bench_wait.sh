#!/usr/bin/env bash
# bench_wait.sh - how long a guest WAITS on a lazily fetched image.  TCG
# boots are CPU-bound and noisy, so a real boot is recorded once and its
# reads are replayed:
#   record  the test guest (tests/e2e/guest.sh; its /init md5sums every file
#           under /usr/bin) boots IMAGE (debian12-minbase-v2.raw) from
#           nbdkit's file plugin with the log filter; the log becomes a trace
#           of (connection, start, offset, length, think time) per read
#           (bench/replay.py parse).  Cached in $BENCH_DIR/wait-trace-*.tsv
#           (keyed by the image, the initramfs and the kernel cmdline);
#           BENCH_WAIT_RERECORD=1 records again.
#   replay  bench/replay.py run: one libnbd handle per recorded connection,
#           each read issued its recorded think time after the read it
#           followed completed, recorded concurrency kept.  Per-read latency
#           and the replay's wall time are measured.
# Against (the repository served by nginx at 100 Mbit/s per connection,
# limit_rate 12500k, behind bench/delayproxy.py adding RTT ms; see there what
# it models), at each RTT of BENCH_WAIT_RTTS (default "2 20"):
#   local          nbdkit file plugin on the image (the floor; no network)
#   deploy         imgdedup deploy (family cached), then local replay
#   curl 64K / 4K  nbdkit curl plugin + cache filter (cache-on-read=true),
#                  default blocks and cache-min-block-size=4K
#   serve cold     imgdedup serve --no-profile, empty node cache
#   serve family   the same, FAMILY (debian12-minbase.raw) deployed first
#   serve profile  family cached, the boot profile published in the repository
#                  (recorded by serve --record during an unmeasured replay,
#                  then `imgdedup profile publish`): serve prefetches it
#   serve fill     family cached, --fill --no-profile
# Reported per configuration, medians of RUNS (3): setup (deploy time, or
# until the export's socket exists), replay (virtual clock, see replay.py;
# and wall time), total stall (setup + replay - the local replay), p50/p99
# read latency, bytes nginx sent (index included), serve's payload fetched
# against the ideal (distinct non-zero blocks read that the node cache
# lacked; not for --fill, which fetches the whole image by design), and
# total/local, total/best curl+cache, stall/stall of the best curl+cache
# (the block size with the lower total at that RTT).
#   IMGDEDUP=build/imgdedup RUNS=3 bench/bench_wait.sh
# BENCH_WAIT_THINK_SCALE=0.1 replays the think times ten times shorter (a
# guest as fast as under KVM, where the waiting is a larger share).
# Skips cleanly without the corpus.  Never part of `make check`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
export IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-/work/corpus/images}
IMAGE=${BENCH_WAIT_IMAGE:-debian12-minbase-v2.raw}
FAMILY=${BENCH_WAIT_FAMILY:-debian12-minbase.raw}
RTTS=${BENCH_WAIT_RTTS:-"2 20"}
THINK=${BENCH_WAIT_THINK_SCALE:-1}
GUEST_DIR_READ=${BENCH_GUEST_DIR:-usr/bin}
PY=/usr/bin/python3
REPLAY=$here/replay.py
for f in "$IMAGE" "$FAMILY"; do
  [ -f "$CORPUS/$f" ] || { echo "bench_wait: $CORPUS/$f missing (see /work/shared/corpus): skipped"; exit 0; }
done
for c in qemu-system-x86_64 nbdkit nginx; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || { echo "bench_wait: $c missing: skipped"; exit 0; }
done
"$PY" -c 'import nbd' 2>/dev/null || { echo "bench_wait: python3-libnbd missing: skipped"; exit 0; }
nbdkit curl --version >/dev/null 2>&1 || { echo "bench_wait: nbdkit curl plugin missing: skipped"; exit 0; }
[ -f "$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so" ] || { echo "bench_wait: no plugin next to $IMGDEDUP"; exit 1; }

BENCH_DIR=${BENCH_DIR:-/var/tmp/imgdedup-bench}
export TMPDIR=$BENCH_DIR
mkdir -p "$TMPDIR"
source "$top/tests/e2e/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
# fixed ports (BENCH_WAIT_PORT.. +2) rather than any free one
PORT0=${BENCH_WAIT_PORT:-19750}
nginx_free_port() { echo "$PORT0"; }
cleanup_fns+=(nginx_stop proxy_stop nbdkit_stop)
guest_prepare
export GUEST_APPEND="imgdedup.dir=$GUEST_DIR_READ"

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

NBDKIT_PID=
nbdkit_start() { # SOCK PLUGIN-ARGS...: a read-only nbdkit on SOCK, returns once it listens
  local sock=$1; shift
  rm -f "$sock" "$sock.pid"
  nbdkit -r -f --exit-with-parent -U "$sock" -P "$sock.pid" "$@" 2> "$sock.err" &
  NBDKIT_PID=$!
  for _ in $(seq 1000); do [ -s "$sock.pid" ] && return 0; sleep 0.01; done
  fail "nbdkit $* did not start: $(cat "$sock.err")"
}
nbdkit_stop() {
  [ -n "$NBDKIT_PID" ] || return 0
  kill "$NBDKIT_PID" 2>/dev/null || true; wait "$NBDKIT_PID" 2>/dev/null || true
  NBDKIT_PID=
}
PROXY_PID=
proxy_start() { # RTT_MS: bench/delayproxy.py in front of nginx -> PROXY_URL
  rm -f "$WORK/proxy.ready"
  "$PY" "$here/delayproxy.py" "$((PORT0 + 1))" "127.0.0.1:$PORT0" "$1" "$WORK/proxy.ready" 2> "$WORK/proxy.err" &
  PROXY_PID=$!
  for _ in $(seq 500); do [ -s "$WORK/proxy.ready" ] && break; sleep 0.01; done
  [ -s "$WORK/proxy.ready" ] || fail "delayproxy did not start: $(cat "$WORK/proxy.err")"
  PROXY_URL=http://127.0.0.1:$((PORT0 + 1))
}
proxy_stop() {
  [ -n "$PROXY_PID" ] || return 0
  kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=
}
serve_up() { # NAME ARGS...: serve in the background; returns once its socket exists
  local name=$1 pid; shift
  SERVE_SOCK=$WORK/$name.sock
  rm -f "$SERVE_SOCK"
  "$IMGDEDUP" serve --socket "$SERVE_SOCK" --json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err" &
  pid=$!
  echo "$pid" > "$WORK/$name.pid"; SERVE_PIDS+=("$pid")
  for _ in $(seq 3000); do
    [ -S "$SERVE_SOCK" ] && return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; fail "serve $name exited: $(cat "$WORK/$name.err")"; }
    sleep 0.01
  done
  fail "serve $name: no socket after 30 s: $(cat "$WORK/$name.err")"
}
replay() { # URI OUT.json: replays the trace, sets R_SECS R_VSECS R_P50 R_P99
  "$PY" "$REPLAY" run "$TRACE" "$1" --json "$2" --think-scale "$THINK" > /dev/null || fail "replay against $1 failed"
  read -r R_SECS R_VSECS R_P50 R_P99 < <("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["seconds"], r["virtual_seconds"], r["p50_ms"], r["p99_ms"])' "$2")
}
declare -A SETUP RSECS VSECS P50 P99 NET PAYLOAD
note() { # KEY SETUP NET_BYTES [PAYLOAD]
  SETUP[$1]+="$2 " RSECS[$1]+="$R_SECS " VSECS[$1]+="$R_VSECS " P50[$1]+="$R_P50 " P99[$1]+="$R_P99 " NET[$1]+="$3 "
  [ -z "${4:-}" ] || PAYLOAD[$1]+="$4 "
}
med() { local -n arr=$1; tr ' ' '\n' <<<"${arr[$2]:-}" | grep . | median; }

REPO=$WORK/repo
mkdir -p "$REPO"
for f in "$IMAGE" "$FAMILY"; do
  ln "$CORPUS/$f" "$REPO/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$REPO/$f"
done

# --- record (or reuse) the trace
key=$({ stat -c '%s %Y' "$CORPUS/$IMAGE"; echo "$GUEST_INITRD $GUEST_KVER $GUEST_APPEND"; } | sha256sum | cut -c1-12)
TRACE=$BENCH_DIR/wait-trace-${IMAGE%.*}-$key.tsv
if [ -n "${BENCH_WAIT_RERECORD:-}" ] || [ ! -s "$TRACE" ]; then
  echo "== recording a boot of $IMAGE (guest reads /$GUEST_DIR_READ) through nbdkit's log filter"
  rm -f "$WORK/nbdkit.log"
  nbdkit_start "$WORK/rec.sock" --filter=log file "$REPO/$IMAGE" logfile="$WORK/nbdkit.log"
  GUEST_TIMEOUT=${GUEST_TIMEOUT:-900} guest_boot \
    "file=nbd:unix:$WORK/rec.sock,format=raw,if=virtio,readonly=on" "$WORK/boot.log" ||
    fail "the recording boot failed"
  nbdkit_stop
  "$PY" "$REPLAY" parse "$WORK/nbdkit.log" "$TRACE"
else
  echo "== reusing the trace $TRACE"
fi
read -r NREADS NBYTES NCONNS < <(awk '!/^#/ {n++; b += $5; c[$1]} END {print n, b, length(c)}' "$TRACE")
echo "trace: $NREADS reads, $NBYTES bytes, $NCONNS connection(s)"

echo "== indexing (scan + map), the family cache, the ideals"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
"$IMGDEDUP" deploy -q --from "$REPO" --cache "$WORK/cache0" "$FAMILY"
IDEAL_COLD=$("$PY" "$REPLAY" ideal "$TRACE" "$REPO/$IMAGE")
IDEAL_FAMILY=$("$PY" "$REPLAY" ideal "$TRACE" "$REPO/$IMAGE" "$REPO/$FAMILY")
echo "ideal: $IDEAL_COLD bytes cold, $IDEAL_FAMILY bytes with $FAMILY cached"
NGINX_LIMIT_RATE=12500k nginx_start "$REPO"
fresh_cache() { # DIR: a copy of the family cache (or empty with "cold")
  rm -rf "$1"
  if [ "${2:-}" = cold ]; then mkdir -p "$1"; else cp -a --sparse=always "$WORK/cache0" "$1"; fi
  sync
}

# --- the boot profile: recorded through serve during one unmeasured replay
echo "== recording and publishing the boot profile"
proxy_start 2
fresh_cache "$WORK/c"
serve_up prof --from "$PROXY_URL" --cache "$WORK/c" --no-profile --record "$WORK/profile" "$IMAGE"
replay "nbd+unix:///$IMAGE?socket=$SERVE_SOCK" "$WORK/r.json"
serve_stop prof
proxy_stop
"$IMGDEDUP" profile publish -q "$WORK/profile" "$IMAGE" "$REPO"

for run in $(seq "$RUNS"); do
  nbdkit_start "$WORK/f.sock" file "$REPO/$IMAGE"
  replay "nbd+unix:///?socket=$WORK/f.sock" "$WORK/r.json"; nbdkit_stop
  note local 0 0
  for rtt in $RTTS; do
    proxy_start "$rtt"
    # deploy (family cached), then the local file
    fresh_cache "$WORK/c"; nginx_log_reset; t0=$(now)
    "$IMGDEDUP" deploy -q --from "$PROXY_URL" --cache "$WORK/c" -o "$WORK/deployed.raw" "$IMAGE"
    t1=$(now)
    nbdkit_start "$WORK/f.sock" file "$WORK/deployed.raw"
    replay "nbd+unix:///?socket=$WORK/f.sock" "$WORK/r.json"; nbdkit_stop
    note "deploy@$rtt" "$(elapsed "$t0" "$t1")" "$(nginx_bytes)"
    rm -f "$WORK/deployed.raw"
    # nbdkit curl + cache filter
    for bs in 64K 4K; do
      bsarg=(); [ "$bs" = 64K ] || bsarg=(cache-min-block-size="$bs")
      nginx_log_reset; t0=$(now)
      nbdkit_start "$WORK/curl.sock" --filter=cache curl "$PROXY_URL/$IMAGE" cache-on-read=true "${bsarg[@]}"
      t1=$(now)
      replay "nbd+unix:///?socket=$WORK/curl.sock" "$WORK/r.json"; nbdkit_stop
      note "curl$bs@$rtt" "$(elapsed "$t0" "$t1")" "$(nginx_bytes)"
    done
    # imgdedup serve
    for cfg in cold family profile fill; do
      args=(--no-profile) state=
      case $cfg in
        cold) state=cold ;;
        profile) args=() ;;
        fill) args=(--no-profile --fill) ;;
      esac
      fresh_cache "$WORK/c" $state; nginx_log_reset; t0=$(now)
      serve_up s --from "$PROXY_URL" --cache "$WORK/c" "${args[@]}" "$IMAGE"
      t1=$(now)
      replay "nbd+unix:///$IMAGE?socket=$SERVE_SOCK" "$WORK/r.json"
      net=$(nginx_bytes)   # before stop: --fill goes on fetching
      serve_stop s
      note "$cfg@$rtt" "$(elapsed "$t0" "$t1")" "$net" "$(serve_stat s bytes_fetched)"
    done
    proxy_stop
  done
  echo "run $run of $RUNS done"
done

# --- the table.  Stall and ratios use the virtual replay time (see
# bench/replay.py: the wall time also holds the host's scheduling lateness).
LOCAL=$(med VSECS local)
total() { awk -v s="$(med SETUP "$1")" -v r="$(med VSECS "$1")" 'BEGIN {printf "%.3f", s + r}'; }
stall() { awk -v t="$(total "$1")" -v l="$LOCAL" 'BEGIN {printf "%.3f", t - l}'; }
printf '\n%s (%s cached where it says so), %d reads, %d bytes read, replayed (think times x %s); medians of %s runs\n' \
  "$IMAGE" "$FAMILY" "$NREADS" "$NBYTES" "$THINK" "$RUNS"
printf 'nginx limit_rate 12500k (100 Mbit/s), RTT by bench/delayproxy.py; local replay %s s (virtual), %s s (wall)\n' \
  "$LOCAL" "$(med RSECS local)"
printf 'ideal fetch: %s bytes cold, %s bytes family cached\n' "$IDEAL_COLD" "$IDEAL_FAMILY"
printf '%-22s %4s %7s %8s %8s %7s %7s %8s %11s %8s %7s %7s %7s\n' \
  configuration rtt setup_s replay_s wall_s stall_s p50_ms p99_ms net_bytes fetch/id x_local x_curl stall/c
row() { # KEY LABEL RTT BEST_CURL_KEY
  local k=$1 tot ideal ratio="-" pay best=0 bstall=0
  tot=$(total "$k")
  [ -z "$4" ] || { best=$(total "$4"); bstall=$(stall "$4"); }
  if [ -n "${PAYLOAD[$k]:-}" ] && [ "${k%@*}" != fill ]; then
    ideal=$IDEAL_FAMILY; [ "${k%@*}" = cold ] && ideal=$IDEAL_COLD
    pay=$(med PAYLOAD "$k")
    ratio=$(awk -v p="$pay" -v i="$ideal" 'BEGIN {printf "%.2f", i ? p / i : 0}')
  fi
  printf '%-22s %4s %7s %8s %8s %7s %7s %8s %11s %8s %7s %7s %7s\n' "$2" "$3" \
    "$(med SETUP "$k")" "$(med VSECS "$k")" "$(med RSECS "$k")" "$(stall "$k")" \
    "$(med P50 "$k")" "$(med P99 "$k")" "$(med NET "$k")" "$ratio" \
    "$(awk -v t="$tot" -v l="$LOCAL" 'BEGIN {printf "%.2f", t / l}')" \
    "$(awk -v t="$tot" -v b="$best" 'BEGIN {if (b > 0) printf "%.2f", t / b; else print "-"}')" \
    "$(awk -v t="$(stall "$k")" -v b="$bstall" 'BEGIN {if (b > 0) printf "%.2f", t / b; else print "-"}')"
}
row local "local file (floor)" - ""
for rtt in $RTTS; do
  # curl+cache at its best: the block size with the lower total
  best=$(for bs in 64K 4K; do echo "$(total "curl$bs@$rtt") curl$bs@$rtt"; done | sort -g | head -n 1 | cut -d' ' -f2)
  row "deploy@$rtt" "deploy, then local" "$rtt" "$best"
  row "curl64K@$rtt" "curl+cache 64K" "$rtt" "$best"
  row "curl4K@$rtt" "curl+cache 4K" "$rtt" "$best"
  row "cold@$rtt" "serve, cold node" "$rtt" "$best"
  row "family@$rtt" "serve, family cached" "$rtt" "$best"
  row "profile@$rtt" "serve, + profile" "$rtt" "$best"
  row "fill@$rtt" "serve --fill, family" "$rtt" "$best"
done

# --- the goals (family cached, 100 Mbit/s), each with the measured figure
goal() { # LABEL VALUE LIMIT
  awk -v l="$1" -v v="$2" -v m="$3" 'BEGIN {printf "  %-52s %6s (goal <= %s): %s\n", l, v, m, (v <= m) ? "met" : "missed"}'
}
xl() { awk -v t="$(total "$1")" -v l="$LOCAL" 'BEGIN {printf "%.2f", t / l}'; }
echo "goals:"
for rtt in $RTTS; do
  best=$(for bs in 64K 4K; do echo "$(total "curl$bs@$rtt") curl$bs@$rtt"; done | sort -g | head -n 1 | cut -d' ' -f2)
  lim=1.3 plim=1.05; [ "$rtt" -ge 20 ] && lim=2 plim=1.1
  goal "RTT $rtt ms: serve, family cached / local" "$(xl "family@$rtt")" "$lim"
  goal "RTT $rtt ms: serve + profile / local" "$(xl "profile@$rtt")" "$plim"
  goal "RTT $rtt ms: serve family total / best curl+cache" \
    "$(awk -v a="$(total "family@$rtt")" -v b="$(total "$best")" 'BEGIN {printf "%.2f", a / b}')" 0.5
  goal "RTT $rtt ms: serve family stall / best curl+cache stall" \
    "$(awk -v a="$(stall "family@$rtt")" -v b="$(stall "$best")" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')" 0.5
  goal "RTT $rtt ms: serve family payload / ideal" \
    "$(awk -v p="$(med PAYLOAD "family@$rtt")" -v i="$IDEAL_FAMILY" 'BEGIN {printf "%.2f", p / i}')" 1.25
  goal "RTT $rtt ms: p99 with --fill / without" \
    "$(awk -v a="$(med P99 "fill@$rtt")" -v b="$(med P99 "family@$rtt")" 'BEGIN {printf "%.2f", b ? a / b : 0}')" 1.2
done
