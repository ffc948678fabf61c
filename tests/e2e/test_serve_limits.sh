#!/usr/bin/env bash
# imgdedup serve's limits and leftovers:
#  1. --readahead 0 turns readahead off (it used to mean the 2 MiB default);
#  2. kill -9 of serve leaves nothing in TMPDIR (it used to leave a
#     directory imgdedup-serve.XXXXXX behind every time);
#  3. 64 --peer URLs are taken, as docs/peers.md says, and 65 refused;
#  4. a read above the advertised maximum request (32 MiB) is refused with
#     EINVAL, one at the maximum is served (nbdraw.py: no client library
#     would send it);
#  5. 40 clients reading 32 MiB at a time: the peak memory of serve and
#     nbdkit (/usr/bin/time -v) is nbdkit's own request buffers (nbdkit 1.32
#     keeps one per connection, zeroed, the size of its largest request:
#     32 MiB each here, which no plugin can avoid) plus at most 150 MiB for
#     everything else; each read used to cost another 10 MiB of the
#     plugin's own (1.6 GiB in all).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy nbdinfo /usr/bin/time; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
BS=4096
mkdir -p "$REPO"
# 64 MiB of data (two 32 MiB reads per client), and a 48 MiB image that is mostly zero blocks
python3 - "$REPO/big.raw" "$REPO/sparse.raw" <<'PY'
import random, sys
r = random.Random(9)
open(sys.argv[1], "wb").write(r.randbytes(64 << 20))
with open(sys.argv[2], "wb") as f:
    f.truncate(48 << 20)
    for mib in range(0, 48, 4):
        f.seek(mib << 20)
        f.write(r.randbytes(4096))
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$REPO"

# ---- 1. --readahead 0 --------------------------------------------------------
nginx_log_reset
serve_start ra0 --from "$NGINX_URL" --readahead 0 --cache "$WORK/cache-ra0" big.raw
python3 "$TESTS_DIR/nbdraw.py" "$SERVE_SOCK" big.raw 0 $BS $BS $BS > "$WORK/ra0.out"
serve_stop ra0
check "--readahead 0: both reads served" test "$(grep -c '^ok ' "$WORK/ra0.out")" = 2
sent=$(awk '$2 == "/big.raw" {s += $4} END {print s + 0}' "$NGINX_LOG")
check "--readahead 0: nothing read ahead (nginx sent the two blocks of big.raw only)" test "$sent" = $((2 * BS))

# ---- 2. kill -9 leaves nothing behind in TMPDIR --------------------------------
mkdir -p "$WORK/tmp"
TMPDIR=$WORK/tmp serve_start k9 --from "$REPO" --cache "$WORK/cache-k9" big.raw
serve_kill9 k9
check "kill -9: nothing left in TMPDIR" test -z "$(ls -A "$WORK/tmp")"

# ---- 3. 64 peers ----------------------------------------------------------------
peers=()
for i in $(seq 64); do peers+=(--peer "http://127.0.0.1:9/peer$i"); done
serve_start p64 --from "$REPO" --cache "$WORK/cache-p" "${peers[@]}" big.raw
serve_stop p64
echo "ok: 64 peers taken (none reachable: $(grep -c -i 'peer' "$WORK/p64.err") warning lines)"
if "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-p" --socket "$WORK/p65.sock" "${peers[@]}" \
    --peer http://127.0.0.1:9/peer65 big.raw > /dev/null 2> "$WORK/p65.err"; then
  fail "65 peers were taken"
fi
check "65 peers: refused, naming the limit" grep -q 'at most 64' "$WORK/p65.err"

# ---- 4. requests above the advertised maximum ------------------------------------
serve_start max --from "$REPO" --cache "$WORK/cache-max" sparse.raw
max=$(nbdinfo --json "$(serve_uri max sparse.raw)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["block_size_maximum"])')
check "the advertised maximum request is 32 MiB" test "$max" = $((32 << 20))
python3 "$TESTS_DIR/nbdraw.py" "$SERVE_SOCK" sparse.raw 0 "$max" 0 $((max + 1)) $((8 << 20)) $((40 << 20)) > "$WORK/max.out"
want=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read(int(sys.argv[2]))).hexdigest())' "$REPO/sparse.raw" "$max")
check "a read of the maximum is served" test "$(sed -n 1p "$WORK/max.out")" = "ok $want"
check "a read one byte above the maximum: EINVAL" test "$(sed -n 2p "$WORK/max.out")" = "error 22"
check "a read of 40 MiB: EINVAL" test "$(sed -n 3p "$WORK/max.out")" = "error 22"
serve_stop max
check "the refusals are reported" grep -q 'more than the maximum' "$WORK/max.err"

# ---- 5. memory with 40 clients reading 32 MiB each --------------------------------
N=40
"$IMGDEDUP" deploy -q --from "$REPO" --cache "$WORK/cache-mem" big.raw
SOCK=$WORK/mem.sock
/usr/bin/time -v -o "$WORK/mem.time" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-mem" \
  --socket "$SOCK" --json big.raw > "$WORK/mem.json" 2> "$WORK/mem.err" &
TIME_PID=$!
for _ in $(seq 300); do
  [ -S "$SOCK" ] && nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1 && break
  sleep 0.1
done
pids=()
for i in $(seq $N); do
  nbdcopy --request-size=$((32 << 20)) --requests=1 --connections=1 "nbd+unix:///big.raw?socket=$SOCK" null: &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a client's 32 MiB reads failed: $(cat "$WORK/mem.err")"; done
kill -TERM "$(pgrep -P $TIME_PID)"
wait $TIME_PID || fail "serve under /usr/bin/time: $(cat "$WORK/mem.err")"
check "40 clients: every read from the cache" test "$(json_get "$WORK/mem.json" bytes_from_cache)" = $((N * (64 << 20)))
peak_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/mem.time")
bound_kb=$(( (N * 32 + 150) * 1024 ))
check "40 clients x 32 MiB reads: peak RSS $((peak_kb / 1024)) MiB <= $((bound_kb / 1024)) MiB" test "$peak_kb" -le "$bound_kb"
echo "PASS test_serve_limits"
