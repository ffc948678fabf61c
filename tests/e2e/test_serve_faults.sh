#!/usr/bin/env bash
# imgdedup serve under faults: every byte a client gets is right or the read
# fails, and the node cache survives.
#  1. kill -9 of serve (and of its nbdkit) in the middle of a read; a
#     restart on the same cache reads the image exactly;
#  2. a cache file changed behind serve's back: a warning, a refetch, exact;
#  3. a block of the source changed after indexing: that block is an I/O
#     error to the client (never wrong data), every other block reads fine;
#  4. a source that answers 500 and drops connections: retried, exact;
#  5. two serve processes on one cache reading sibling images at once: both
#     exact, the cache consistent and complete afterwards.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy nbdinfo qemu-img qemu-io; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
T=$WORK/t
BS=4096
mkdir -p "$REPO" "$T/fs"
cp -r /usr/share/common-licenses "$T/fs/lic"
python3 -c 'import random,sys; r=random.Random(11); open(sys.argv[1],"wb").write(r.randbytes(3000000))' "$T/fs/rnd.bin"
mkext4 "$REPO/base.raw" 12 "$T/fs"
python3 - "$REPO/base.raw" "$REPO/sib.raw" <<'PY'
import random, sys
d = bytearray(open(sys.argv[1], "rb").read())
r = random.Random(12)
for b in r.sample(range(len(d) // 4096), 60):
    d[b * 4096:(b + 1) * 4096] = r.randbytes(4096)
open(sys.argv[2], "wb").write(d)
PY
cp "$REPO/base.raw" "$REPO/bad.raw"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
REF=$REPO/base.raw
SIZE=$(stat -c %s "$REF")
read -r _ NEW_COLD _ _ < <(serve_expect "$REF" $BS)
nginx_start "$REPO"

# a block of REF whose content occurs nowhere else in it (nor in sib.raw)
UNIQUE_BLOCK=$(python3 - "$TESTS_DIR" "$REF" "$REPO/sib.raw" <<'PY'
import sys, collections
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
a, b = blocks(sys.argv[2], 4096), blocks(sys.argv[3], 4096)
n = collections.Counter(a + b)
print(next(i for i in range(len(a) // 2, len(a)) if a[i] != ZERO and n[a[i]] == 2 and a[i] == b[i]))
PY
)
echo "block $UNIQUE_BLOCK of base.raw holds content found nowhere else"

# ---- 1. kill -9 in the middle of a read ----------------------------------
# a slow source: each data request waits 200 ms
python3 "$TESTS_DIR/faultserver.py" --root "$REPO" --port-file "$WORK/slow.port" --delay 0.2 \
  --log "$WORK/slow.log" &
SLOW_PID=$!
stop_slow() { kill "$SLOW_PID" 2>/dev/null; wait "$SLOW_PID" 2>/dev/null || true; }
cleanup_fns+=(stop_slow)
for _ in $(seq 100); do [ -s "$WORK/slow.port" ] && break; sleep 0.1; done
SLOW_URL=http://127.0.0.1:$(cat "$WORK/slow.port")
serve_start k1 --from "$SLOW_URL" --cache "$WORK/cache-kill" base.raw
nbdcopy --no-extents "$(serve_uri k1 base.raw)" "$WORK/partial.raw" 2>/dev/null &
COPY_PID=$!
for _ in $(seq 300); do [ "$(grep -c '^206 base.raw' "$WORK/slow.log" 2>/dev/null)" -ge 4 ] && break; sleep 0.05; done
[ "$(grep -c "^206 base.raw" "$WORK/slow.log")" -ge 4 ] || fail "the read did not get going"
sleep 0.3   # what the first requests brought is durable by now (serve flushes every 100 ms)
kill -0 "$COPY_PID" 2>/dev/null || fail "the read finished before the kill: make the source slower"
serve_kill9 k1
if wait "$COPY_PID"; then fail "nbdcopy survived the server's death"; fi
echo "ok: serve and nbdkit killed with SIGKILL after $(grep -c '^206 base.raw' "$WORK/slow.log") range requests"
stop_slow
"$IMGDEDUP" cache ls "$WORK/cache-kill" > "$WORK/ls.out" 2> "$WORK/ls.err" || fail "cache ls after kill -9: $(cat "$WORK/ls.err")"
check "cache ls after kill -9: no warning" test ! -s "$WORK/ls.err"
nginx_log_reset
serve_start k2 --from "$NGINX_URL" --cache "$WORK/cache-kill" base.raw
nbdcopy --no-extents "$(serve_uri k2 base.raw)" "$WORK/after-kill.raw"
serve_stop k2
cmp "$WORK/after-kill.raw" "$REF" || fail "after kill -9: read differs"
check "after kill -9: the restart's read is exact, no read error" test "$(serve_stat k2 read_errors)" = 0
check "after kill -9: no cached block failed verification" test "$(serve_stat k2 cache_damaged)" = 0
kept=$(( NEW_COLD - $(serve_stat k2 blocks_filled) ))
check "after kill -9: the restart fetched only what was not kept" \
  test "$(serve_stat k2 bytes_fetched)" = $(( (NEW_COLD - kept) * BS ))
check "after kill -9: what was fetched before the kill was kept ($kept of $NEW_COLD blocks)" test "$kept" -gt 0

# ---- 2. a cache file changed behind serve's back --------------------------
serve_start t1 --from "$REPO" --cache "$WORK/cache-tamper" base.raw
nbdcopy --no-extents "$(serve_uri t1 base.raw)" "$WORK/t1.raw"
serve_stop t1
# the cache's copy of base.raw's data: the file holding the block's bytes
victim=$(python3 - "$WORK/cache-tamper" "$REF" "$UNIQUE_BLOCK" <<'PY'
import os, sys
cache, ref, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = open(ref, "rb").read()[b * 4096:(b + 1) * 4096]
for root, _, files in os.walk(cache):
    for f in files:
        p = os.path.join(root, f)
        with open(p, "rb") as fh:
            data = fh.read()
        at = data.find(want)
        if at >= 0:
            print(p, at)
            sys.exit(0)
sys.exit("no cache file holds block %d" % b)
PY
) || fail "cannot find the cached block: $victim"
read -r vfile voff <<<"$victim"
python3 - "$vfile" "$voff" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) + 100)
    c = f.read(1)
    f.seek(int(sys.argv[2]) + 100)
    f.write(bytes([c[0] ^ 0xff]))
PY
echo "changed one byte of $vfile at offset $((voff + 100))"
serve_start t2 --from "$REPO" --cache "$WORK/cache-tamper" base.raw
nbdcopy --no-extents "$(serve_uri t2 base.raw)" "$WORK/t2.raw"
serve_stop t2
cmp "$WORK/t2.raw" "$REF" || fail "tampered cache: a wrong byte was served"
check "tampered cache: a warning was printed" grep -qi warning "$WORK/t2.err"
check "tampered cache: counted as damaged" test "$(serve_stat t2 cache_damaged)" -ge 1
check "tampered cache: the block was fetched again" test "$(serve_stat t2 bytes_fetched)" -ge $BS
echo "ok: tampered cache: $(grep -i warning "$WORK/t2.err" | head -n 1)"
echo "    (the changed file is not trusted again in that process: $(serve_stat t2 bytes_fetched) bytes fetched)"
# the refetch repaired the file: the next serve reads all of it locally
serve_start t3 --from "$REPO" --cache "$WORK/cache-tamper" base.raw
nbdcopy --no-extents "$(serve_uri t3 base.raw)" "$WORK/t3.raw"
serve_stop t3
cmp "$WORK/t3.raw" "$REF" || fail "tampered cache, next run: read differs"
check "tampered cache, next run: no warning" test ! -s "$WORK/t3.err"
check "tampered cache, next run: repaired, nothing fetched" test "$(serve_stat t3 bytes_fetched)" = 0

# ---- 3. a block of the source changed after indexing ----------------------
BAD=$UNIQUE_BLOCK
python3 - "$REPO/bad.raw" "$BAD" <<'PY'
import os, sys
st = os.stat(sys.argv[1])
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) * 4096 + 7)
    f.write(b"corrupted")
os.utime(sys.argv[1], ns=(st.st_atime_ns, st.st_mtime_ns))
PY
serve_start bad --from "$NGINX_URL" --cache "$WORK/cache-bad" bad.raw
BADSOCK=$WORK/bad.sock
if qemu-io -r -f raw -c "read $((BAD * BS)) $BS" "$(serve_uri bad bad.raw)" > "$WORK/qio.out" 2>&1; then
  fail "the changed block was served: $(cat "$WORK/qio.out")"
fi
grep -q 'Input/output error' "$WORK/qio.out" || fail "not an I/O error: $(cat "$WORK/qio.out")"
echo "ok: the changed block is an I/O error: $(grep -m1 'read failed' "$WORK/qio.out")"
# every other byte reads right: the ranges before and after it
range_read() { # OFF LEN OUT: bytes [OFF, OFF+LEN) of the export, through qemu's NBD client
  qemu-img convert -O raw "json:{\"driver\":\"raw\",\"offset\":$1,\"size\":$2,\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$BADSOCK\"},\"export\":\"bad.raw\"}}" "$3"
}
range_read 0 $((BAD * BS)) "$WORK/before.raw" || fail "reading the blocks before the changed one failed"
range_read $(((BAD + 1) * BS)) $((SIZE - (BAD + 1) * BS)) "$WORK/after.raw" || fail "reading the blocks after the changed one failed"
cmp "$WORK/before.raw" <(head -c $((BAD * BS)) "$REF") || fail "blocks before the changed one differ"
cmp "$WORK/after.raw" <(tail -c +$(((BAD + 1) * BS + 1)) "$REF") || fail "blocks after the changed one differ"
if nbdcopy --no-extents "$(serve_uri bad bad.raw)" "$WORK/bad-all.raw" 2>/dev/null; then
  fail "a full read of the damaged image succeeded"
fi
# asking again still fails: the bad bytes were not cached
if qemu-io -r -f raw -c "read $((BAD * BS)) $BS" "$(serve_uri bad bad.raw)" >/dev/null 2>&1; then
  fail "the changed block was served on a second read"
fi
serve_stop bad
check "changed source block: read errors counted" test "$(serve_stat bad read_errors)" -ge 2
check "changed source block: reported on stderr" test -s "$WORK/bad.err"
echo "ok: changed source block: all other $(( SIZE / BS - 1 )) blocks exact; $(head -n 1 "$WORK/bad.err")"

# ---- 4. 500s and dropped connections ----------------------------------------
python3 "$TESTS_DIR/faultserver.py" --root "$REPO" --port-file "$WORK/fault.port" --fail500 3 --drop 3 \
  --log "$WORK/fault.log" &
FAULT_PID=$!
stop_fault() { kill "$FAULT_PID" 2>/dev/null; wait "$FAULT_PID" 2>/dev/null || true; }
cleanup_fns+=(stop_fault)
for _ in $(seq 100); do [ -s "$WORK/fault.port" ] && break; sleep 0.1; done
serve_start f1 --from "http://127.0.0.1:$(cat "$WORK/fault.port")" --cache "$WORK/cache-fault" base.raw
nbdcopy --no-extents "$(serve_uri f1 base.raw)" "$WORK/f1.raw"
serve_stop f1
stop_fault
cmp "$WORK/f1.raw" "$REF" || fail "faulty source: read differs"
check "faulty source: 3 answers were 500" test "$(grep -c '^500 ' "$WORK/fault.log")" = 3
check "faulty source: 3 transfers were dropped" test "$(grep -c ' DROP$' "$WORK/fault.log")" = 3
check "faulty source: no read error" test "$(serve_stat f1 read_errors)" = 0
check "faulty source: payload counted once" test "$(serve_stat f1 bytes_fetched)" = $((NEW_COLD * BS))

# ---- 5. two serve processes on one cache at once ----------------------------
nginx_log_reset
serve_start c1 --from "$NGINX_URL" --cache "$WORK/cache-shared" base.raw
serve_start c2 --from "$NGINX_URL" --cache "$WORK/cache-shared" sib.raw
nbdcopy --no-extents "$(serve_uri c1 base.raw)" "$WORK/c1.raw" & P1=$!
nbdcopy --no-extents "$(serve_uri c2 sib.raw)" "$WORK/c2.raw" & P2=$!
wait "$P1" || fail "concurrent read of base.raw failed"
wait "$P2" || fail "concurrent read of sib.raw failed"
serve_stop c1
serve_stop c2
cmp "$WORK/c1.raw" "$REF" || fail "concurrent: base.raw differs"
cmp "$WORK/c2.raw" "$REPO/sib.raw" || fail "concurrent: sib.raw differs"
"$IMGDEDUP" cache ls --json "$WORK/cache-shared" > "$WORK/ls.json" 2> "$WORK/ls.err" ||
  fail "cache ls after concurrent serves: $(cat "$WORK/ls.err")"
check "concurrent: cache ls without warnings" test ! -s "$WORK/ls.err"
check "concurrent: serve and cache ls reported no damage" test "$(cat "$WORK/c1.err" "$WORK/c2.err" | grep -ci -E 'damag|corrupt|warning')" = 0
read -r _ NEW_UNION _ _ < <(python3 - "$TESTS_DIR" "$REF" "$REPO/sib.raw" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
u = {d for p in sys.argv[2:] for d in blocks(p, 4096) if d != ZERO}
print(0, len(u), 0, 0)
PY
)
filled=$(( $(serve_stat c1 blocks_filled) + $(serve_stat c2 blocks_filled) ))
check "concurrent: every distinct block of both images cached" test "$filled" -ge "$NEW_UNION"
nginx_log_reset
serve_start c3 --from "$NGINX_URL" --cache "$WORK/cache-shared" base.raw sib.raw
nbdcopy --no-extents "$(serve_uri c3 base.raw)" "$WORK/c3a.raw"
nbdcopy --no-extents "$(serve_uri c3 sib.raw)" "$WORK/c3b.raw"
serve_stop c3
cmp "$WORK/c3a.raw" "$REF" && cmp "$WORK/c3b.raw" "$REPO/sib.raw" || fail "re-read after concurrent serves differs"
check "concurrent: afterwards both images are read from the cache alone" test "$(serve_stat c3 bytes_fetched)" = 0
echo "ok: two processes on one cache: both exact, $filled blocks cached for $NEW_UNION distinct"
echo "PASS test_serve_faults"
