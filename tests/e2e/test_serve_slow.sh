#!/usr/bin/env bash
# imgdedup serve with slow and stalled sources (faultserver.py trickling or
# stalling its answers): reads are answered as soon as their own blocks are
# in, never wait longer than --read-timeout, start-up says what it is doing,
# and SIGTERM stops serve at once whatever is in flight.
#  1. a trickling source (16 KiB/s): a 4 KiB read is answered before the
#     readahead behind it was sent (it used to wait for all 2 MiB of it);
#  2. a stalled source, --read-timeout 2 with --timeout 30: the read fails
#     with EIO (it used to take (1 + 6 retries) x 30 s);
#  3. SIGTERM while a read waits for a stalled source (--read-timeout 600):
#     serve exits 0 with its counters, and the read is not answered with an
#     error: its connection closes (a client that reconnects sends it again;
#     test_serve_restart_guest.sh);
#  4. an index that is slow to arrive: start-up progress on stderr.
# The bounds on waiting below (timeout, 20 s after SIGTERM) only keep a hang
# from stalling the suite; nothing is timed.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/serve.sh"
for c in nbdkit nbdinfo timeout; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
BS=4096
mkdir -p "$REPO"
python3 -c 'import random,sys; open(sys.argv[1],"wb").write(random.Random(3).randbytes(8 << 20))' "$REPO/base.raw"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
REF=$REPO/base.raw
sha_of() { python3 -c 'import hashlib,sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); print(hashlib.sha256(f.read(int(sys.argv[3]))).hexdigest())' "$@"; }

FS_PIDS=()
stop_faultservers() { local p; for p in "${FS_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; true; }
cleanup_fns+=(stop_faultservers)
start_faultserver() { # NAME ARGS...: FS_URL; its log is $WORK/NAME.log
  local name=$1
  shift
  python3 "$TESTS_DIR/faultserver.py" --root "$REPO" --port-file "$WORK/$name.port" --log "$WORK/$name.log" "$@" &
  FS_PIDS+=($!)
  for _ in $(seq 100); do [ -s "$WORK/$name.port" ] && break; sleep 0.1; done
  [ -s "$WORK/$name.port" ] || fail "faultserver $name did not start"
  FS_URL=http://127.0.0.1:$(cat "$WORK/$name.port")
}

# ---- 1. a trickling source: the read does not wait for its readahead ---------
start_faultserver trickle --rate 16384
serve_start t --from "$FS_URL" --timeout 5 --cache "$WORK/cache-t" base.raw
timeout 60 python3 "$TESTS_DIR/nbdraw.py" "$SERVE_SOCK" base.raw 0 $BS > "$WORK/t.out" ||
  fail "a 4 KiB read from a trickling source did not come back within 60 s"
cp "$WORK/trickle.log" "$WORK/trickle.at-answer"
check "trickling source: the read is exact" test "$(cat "$WORK/t.out")" = "ok $(sha_of "$REF" 0 $BS)"
check "trickling source: answered before any response longer than the block was sent" \
  test "$(awk '$1 == "done" && $5 > 4096' "$WORK/trickle.at-answer" | wc -l)" = 0
# the readahead still happens, after the answer
for _ in $(seq 200); do grep -q '^206 base.raw bytes=4096-' "$WORK/trickle.log" && break; sleep 0.1; done
check "trickling source: the readahead followed the answer" grep -q '^206 base.raw bytes=4096-' "$WORK/trickle.log"
serve_stop t
check "trickling source: no read error" test "$(serve_stat t read_errors)" = 0

# ---- 2. a stalled source: the read fails after --read-timeout ------------------
start_faultserver stall --stall 100000
serve_start s --from "$FS_URL" --timeout 30 --read-timeout 2 --cache "$WORK/cache-s" base.raw
timeout 60 python3 "$TESTS_DIR/nbdraw.py" "$SERVE_SOCK" base.raw $((100 * BS)) $BS > "$WORK/s.out" ||
  fail "a read from a stalled source with --read-timeout 2 did not come back within 60 s"
check "stalled source: the read failed with EIO" grep -qx 'error 5' "$WORK/s.out"
serve_stop s
check "stalled source: the error names the read time limit" grep -q 'read time limit (2 s)' "$WORK/s.err"
check "stalled source: counted as a read error" test "$(serve_stat s read_errors)" = 1
echo "ok: stalled source: $(grep -m1 'read time limit' "$WORK/s.err")"

# ---- 3. SIGTERM with a read waiting for a stalled source -----------------------
serve_start k --from "$FS_URL" --timeout 30 --read-timeout 600 --cache "$WORK/cache-k" base.raw
python3 "$TESTS_DIR/nbdraw.py" "$SERVE_SOCK" base.raw $((200 * BS)) $BS > "$WORK/k.out" 2>&1 &
READER=$!
before=$(grep -c '^206 .* STALL$' "$WORK/stall.log")
for _ in $(seq 100); do [ "$(grep -c '^206 .* STALL$' "$WORK/stall.log")" -gt "$before" ] && break; sleep 0.1; done
[ "$(grep -c '^206 .* STALL$' "$WORK/stall.log")" -gt "$before" ] || fail "the read did not reach the source"
kpid=$(cat "$WORK/k.pid")
kill -TERM "$kpid"
for _ in $(seq 200); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$kpid" 2>/dev/null && fail "serve still running 20 s after SIGTERM (a read in flight on a stalled source)"
serve_stop k
check "SIGTERM with a read in flight: exit 0 and the counters" test "$(serve_stat k read_errors)" = 0
wait "$READER" || true
check "SIGTERM with a read in flight: the client's connection closed" \
  grep -q 'the server closed the connection' "$WORK/k.out"
check "SIGTERM with a read in flight: no error reply" bash -c "! grep -q '^error ' '$WORK/k.out'"
echo "ok: SIGTERM with a read in flight: the client got: $(tail -n 1 "$WORK/k.out")"

# ---- 4. start-up progress ---------------------------------------------------------
start_faultserver slowindex --index-delay 2.5
serve_start p --from "$FS_URL" --cache "$WORK/cache-p" base.raw
serve_stop p
check "slow index: start-up progress on stderr" grep -q 'starting ([0-9]* s): reading the .* of base.raw' "$WORK/p.err"
echo "ok: slow index: $(grep -m1 'starting (' "$WORK/p.err")"
echo "PASS test_serve_slow"
