#!/usr/bin/env bash
# imgdedup serve under hostile conditions, with many clients at once
# (python3-libnbd readers, nbdclients.py; every byte compared with the image
# read by python itself):
#  1. kill -9 of serve and nbdkit, then of nbdkit alone, while parallel
#     readers read two exports: what they got before was exact; a restart's
#     readers read everything exactly; cache ls is clean and a later deploy
#     verifies what the cache holds (fetches nothing);
#  2. two serves of overlapping images on one cache, with cache gc run over
#     and over and a deploy into that cache at the same time: every read
#     exact, nothing crashes, gc never removes a file in use;
#  3. tampering under a running export: a complete cached image and a
#     partial flipped and truncated, a repository image changed: the clients
#     get the right bytes or an I/O error, never wrong bytes;
#  4. 200 clients connected at once, 50 of them hanging up in the middle of
#     a request, twice: nbdkit stays up, its fd count returns to where it
#     was, its peak memory stays bounded, every read exact.
# The waits below (polls with a bound) only keep a hang from stalling the
# suite; nothing is timed.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || fail "python3-libnbd missing (scripts/install-deps)"
CLIENTS="/usr/bin/python3 $TESTS_DIR/nbdclients.py"

REPO=$WORK/repo
BS=4096
mkdir -p "$REPO"
# three related 4 MiB images: random blocks, every 9th zero, some repeats;
# sib.raw is base.raw with 80 blocks changed, third.raw half base, half new
python3 - "$REPO" <<'PY'
import random, sys
r = random.Random(31)
d = sys.argv[1]
def image(seed_blocks):
    out = []
    for i, b in enumerate(seed_blocks):
        out.append(bytes(4096) if i % 9 == 4 else b)
    return b"".join(out)
base = [r.randbytes(4096) for _ in range(1024)]
for i in range(0, 1024, 50):
    base[i + 1] = base[i]          # repeats inside the image
sib = list(base)
for i in r.sample(range(1024), 80):
    sib[i] = r.randbytes(4096)
third = base[:512] + [r.randbytes(4096) for _ in range(512)]
open(d + "/base.raw", "wb").write(image(base))
open(d + "/sib.raw", "wb").write(image(sib))
open(d + "/third.raw", "wb").write(image(third))
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
cp "$REPO/third.raw" "$WORK/third.ref"   # the indexed content (the test changes the repository's copy)
nginx_start "$REPO"

# field FILE KEY: a key of the JSON object nbdclients.py printed
field() { json_get "$1" "$2"; }
# readers_ok FILE CHUNKS: every reader read every chunk exactly, none failed
readers_ok() {
  [ "$(field "$1" wrong)/$(field "$1" eio)/$(field "$1" dead)/$(field "$1" ok)" = "0/0/0/$2" ] ||
    { echo "readers: $(cat "$1")" >&2; return 1; }
}
nbdkit_pid() { pgrep -P "$(cat "$WORK/$1.pid")" -x nbdkit; }
no_sanitizer_report() { ! grep -l -E 'ERROR: AddressSanitizer|runtime error:|LeakSanitizer' "$WORK"/*.err; }
CHUNKS=$(( (4 << 20) / 65536 ))   # chunks of 64 KiB in an image

# ---- 1. kill -9 under parallel readers ----------------------------------------
# a slow source (each data request waits 50 ms) and no readahead: the reads
# are still going when the kill lands
python3 "$TESTS_DIR/faultserver.py" --root "$REPO" --port-file "$WORK/slow.port" --delay 0.05 \
  --log "$WORK/slow.log" 2> "$WORK/slow.err" &
SLOW_PID=$!
stop_slow() { kill "$SLOW_PID" 2>/dev/null; wait "$SLOW_PID" 2>/dev/null || true; }
cleanup_fns+=(stop_slow)
for _ in $(seq 100); do [ -s "$WORK/slow.port" ] && break; sleep 0.1; done
SLOW_URL=http://127.0.0.1:$(cat "$WORK/slow.port")
CK=$WORK/cache-kill
# kill_round NAME WHAT: serve base.raw and sib.raw, 3 readers each, and kill
# (WHAT: both = serve and nbdkit, nbdkit = nbdkit alone) once the source
# has answered 12 more requests
kill_round() {
  local name=$1 what=$2 before i rc=0
  before=$(grep -c '^done ' "$WORK/slow.log" 2>/dev/null || true)
  serve_start "$name" --from "$SLOW_URL" --cache "$CK" --readahead 0 base.raw sib.raw
  $CLIENTS readers "$(serve_uri "$name" base.raw)" "$REPO/base.raw" 3 --seed 1 > "$WORK/$name.a.json" & local ra=$!
  $CLIENTS readers "$(serve_uri "$name" sib.raw)" "$REPO/sib.raw" 3 --seed 2 > "$WORK/$name.b.json" & local rb=$!
  for i in $(seq 600); do
    [ "$(grep -c '^done ' "$WORK/slow.log")" -ge $((before + 12)) ] && break
    sleep 0.05
  done
  [ "$(grep -c '^done ' "$WORK/slow.log")" -ge $((before + 12)) ] || fail "$name: the reads did not get going"
  if [ "$what" = both ]; then
    serve_kill9 "$name"
  else
    kill -KILL "$(nbdkit_pid "$name")"
    # serve itself notices and exits: not 0, and never a hang
    for i in $(seq 300); do kill -0 "$(cat "$WORK/$name.pid")" 2>/dev/null || break; sleep 0.1; done
    wait "$(cat "$WORK/$name.pid")" || rc=$?
    check "$name: serve exits, with a failure status ($rc), when its nbdkit is killed" test "$rc" != 0
  fi
  wait "$ra" || fail "$name: a reader of base.raw got wrong bytes: $(cat "$WORK/$name.a.json")"
  wait "$rb" || fail "$name: a reader of sib.raw got wrong bytes: $(cat "$WORK/$name.b.json")"
  local got=$(( $(field "$WORK/$name.a.json" ok) + $(field "$WORK/$name.b.json" ok) ))
  check "$name: kill -9 of $what under 6 readers: the $got chunks read before it were exact" \
    test "$(field "$WORK/$name.a.json" wrong)/$(field "$WORK/$name.b.json" wrong)" = 0/0
  check "$name: ... and no read failed with an error before the kill" \
    test "$(field "$WORK/$name.a.json" eio)/$(field "$WORK/$name.b.json" eio)" = 0/0
  "$IMGDEDUP" cache ls "$CK" > "$WORK/$name.ls" 2> "$WORK/$name.lserr" ||
    fail "cache ls after $name: $(cat "$WORK/$name.lserr")"
  check "$name: cache ls after the kill: no warning" test ! -s "$WORK/$name.lserr"
}
kill_round k1 both
kill_round k2 nbdkit
stop_slow
serve_start k3 --from "$NGINX_URL" --cache "$CK" base.raw sib.raw
$CLIENTS readers "$(serve_uri k3 base.raw)" "$REPO/base.raw" 3 --seed 3 > "$WORK/k3.a.json" & ra=$!
$CLIENTS readers "$(serve_uri k3 sib.raw)" "$REPO/sib.raw" 3 --seed 4 > "$WORK/k3.b.json" & rb=$!
wait "$ra" || fail "after the kills: base.raw read wrong: $(cat "$WORK/k3.a.json")"
wait "$rb" || fail "after the kills: sib.raw read wrong: $(cat "$WORK/k3.b.json")"
serve_stop k3
check "after the kills: 3 readers read all of base.raw exactly" readers_ok "$WORK/k3.a.json" $((3 * CHUNKS))
check "after the kills: 3 readers read all of sib.raw exactly" readers_ok "$WORK/k3.b.json" $((3 * CHUNKS))
check "after the kills: no read error, no cached block damaged" \
  test "$(serve_stat k3 read_errors)/$(serve_stat k3 cache_damaged)" = 0/0
DISTINCT=$(python3 - "$TESTS_DIR" "$REPO/base.raw" "$REPO/sib.raw" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
print(len({d for p in sys.argv[2:] for d in blocks(p, 4096) if d != ZERO}))
PY
)
"$IMGDEDUP" cache ls --json "$CK" > "$WORK/k.ls.json" 2> "$WORK/k.lserr"
check "after the kills: cache ls without warnings: two partials holding all $DISTINCT distinct blocks between them" \
  python3 - "$WORK/k.ls.json" "$WORK/k.lserr" "$DISTINCT" <<'PY'
import json, os, sys
v = json.load(open(sys.argv[1]))["images"]
ok = (os.path.getsize(sys.argv[2]) == 0 and len(v) == 2 and all(i["partial"] for i in v)
      and sum(i["blocks"] for i in v) >= int(sys.argv[3]))
sys.exit(None if ok else "cache ls: %s %s" % (v, open(sys.argv[2]).read()))
PY
for img in base.raw sib.raw; do
  "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$CK" -o "$WORK/k.$img" --json -q "$img" > "$WORK/k.$img.json" 2> "$WORK/k.$img.err" ||
    fail "deploy of $img after the kills: $(cat "$WORK/k.$img.err")"
  check "after the kills: a deploy of $img is exact" cmp "$WORK/k.$img" "$REPO/$img"
  check "... every block verified from the cache, none fetched ($(json_get "$WORK/k.$img.json" bytes_fetched)), no warning ($(head -c 300 "$WORK/k.$img.err"))" \
    test "$(json_get "$WORK/k.$img.json" bytes_fetched)" = 0 -a ! -s "$WORK/k.$img.err"
done

# ---- 2. concurrent serves + cache gc + deploy on one cache --------------------
CS=$WORK/cache-shared
serve_start b1 --from "$NGINX_URL" --cache "$CS" base.raw sib.raw
serve_start b2 --from "$NGINX_URL" --cache "$CS" sib.raw third.raw
rpids=() seed=10
for e in "b1 base.raw" "b1 sib.raw" "b2 sib.raw" "b2 third.raw"; do
  set -- $e
  ref=$REPO/$2; [ "$2" = third.raw ] && ref=$WORK/third.ref
  $CLIENTS readers "$(serve_uri "$1" "$2")" "$ref" 2 --rounds 2 --seed $((seed += 1)) > "$WORK/$1.$2.json" &
  rpids+=($!)
done
gc_loop() {
  local i
  for i in $(seq 12); do
    "$IMGDEDUP" cache gc --max-size 0 --json "$CS" > "$WORK/gc.$i.json" 2> "$WORK/gc.$i.err" || echo "gc $i: exit $?" >> "$WORK/gc.fail"
  done
}
gc_loop & gcpid=$!
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$CS" -o "$WORK/b.third" --json -q third.raw > "$WORK/bd1.json" 2> "$WORK/bd1.err" & d1=$!
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$CS" --json -q base.raw > "$WORK/bd2.json" 2> "$WORK/bd2.err" & d2=$!
rc=0; wait "$d1" || rc=$?
check "concurrent: a deploy of third.raw (-o) beside the serves and gc succeeds (rc $rc)" test "$rc" = 0
check "... and is exact" cmp "$WORK/b.third" "$WORK/third.ref"
rc=0; wait "$d2" || rc=$?
check "concurrent: a deploy of base.raw into the cache, served at the same time, succeeds (rc $rc)" test "$rc" = 0
for p in "${rpids[@]}"; do wait "$p" || fail "concurrent: a reader got wrong bytes: $(cat "$WORK"/b?.*.json)"; done
wait "$gcpid"
check "concurrent: cache gc ran 12 times beside them, every run exit 0" test ! -e "$WORK/gc.fail"
out=$(json_get "$WORK/bd2.json" output)
if [ -e "$out" ]; then
  check "concurrent: the deploy of base.raw into the cache is exact" cmp "$out" "$REPO/base.raw"
else
  check "concurrent: the deployed base.raw, unused once written, was removed by a later gc" grep -q '"images_removed":[1-9]' "$WORK"/gc.*.json
fi
for e in b1.base.raw b1.sib.raw b2.sib.raw b2.third.raw; do
  check "concurrent: 2 readers read $e twice, all exact" readers_ok "$WORK/$e.json" $((2 * 2 * CHUNKS))
done
# with both serves still up: one more gc finds what they use in use
"$IMGDEDUP" cache gc --max-size 0 --json "$CS" > "$WORK/gc.last.json" 2> "$WORK/gc.last.err" ||
  fail "the last gc: $(cat "$WORK/gc.last.err")"
# a file gc removed under a serve would show as "(deleted)" among nbdkit's
# open files (a completed partial is renamed, an image gc forgets is not
# deleted)
removed_in_use() {
  local n
  n=$(find "/proc/$(nbdkit_pid b1)/fd" "/proc/$(nbdkit_pid b2)/fd" -type l -printf '%l\n' | grep -F "$CS/" | grep -c '(deleted)$' || true)
  echo "    (cache files the serves hold open: $(find "/proc/$(nbdkit_pid b1)/fd" "/proc/$(nbdkit_pid b2)/fd" -type l -printf '%l\n' | grep -cF "$CS/"))" >&2
  [ "$n" = 0 ]
}
check "concurrent: no cache file the serves hold open was removed" removed_in_use
check "concurrent: gc found files in use and kept them" grep -q "is in use; kept" "$WORK/gc.last.err"
echo "    (gc said: $(sort -u "$WORK"/gc.*.err | head -n 3 | tr '\n' ' '))"
serve_stop b1
serve_stop b2
check "concurrent: both serves stopped cleanly, no read error" \
  test "$(serve_stat b1 read_errors)/$(serve_stat b2 read_errors)" = 0/0
serve_start b3 --from "$NGINX_URL" --cache "$CS" base.raw sib.raw third.raw
for img in base.raw sib.raw third.raw; do
  nbdcopy "$(serve_uri b3 "$img")" "$WORK/b3.$img"
done
serve_stop b3
check "concurrent: afterwards base.raw reads exactly" cmp "$WORK/b3.base.raw" "$REPO/base.raw"
check "concurrent: ... sib.raw too" cmp "$WORK/b3.sib.raw" "$REPO/sib.raw"
check "concurrent: ... third.raw too" cmp "$WORK/b3.third.raw" "$WORK/third.ref"
check "concurrent: no sanitizer report anywhere" no_sanitizer_report

# ---- 3. tampering under a running export -------------------------------------
CT=$WORK/cache-tamper
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$CT" -q base.raw
serve_start t1 --from "$NGINX_URL" --cache "$CT" sib.raw third.raw
$CLIENTS readers "$(serve_uri t1 sib.raw)" "$REPO/sib.raw" 1 > "$WORK/r-t1.json" ||
  fail "tamper: first read wrong: $(cat "$WORK/r-t1.json")"
check "tamper: sib.raw read once, exact (most of it from the cached base.raw)" readers_ok "$WORK/r-t1.json" "$CHUNKS"
# flip N bytes at random offsets in the data of FILE (seed S), in place
flip() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
for _ in range(n):
    at = r.randrange(size)
    c = os.pread(fd, 1, at)
    os.pwrite(fd, bytes([c[0] ^ 0x5a]), at)
os.close(fd)
PY
}
flip "$CT/images/base.raw" 60 41
flip "$CT/images/sib.raw.partial" 60 42
$CLIENTS readers "$(serve_uri t1 sib.raw)" "$REPO/sib.raw" 2 --chunk 4096 > "$WORK/r-t2.json" ||
  fail "tamper: wrong bytes served after the cache files changed: $(cat "$WORK/r-t2.json")"
check "tamper: cached image and partial changed under the export: never a wrong byte (eio $(field "$WORK/r-t2.json" eio))" \
  test "$(field "$WORK/r-t2.json" wrong)" = 0
check "tamper: ... every block refetched and right" readers_ok "$WORK/r-t2.json" $((2 * 1024))
truncate -s 1M "$CT/images/base.raw"
truncate -s 512K "$CT/images/sib.raw.partial"
$CLIENTS readers "$(serve_uri t1 sib.raw)" "$REPO/sib.raw" 2 > "$WORK/r-t3.json" ||
  fail "tamper: wrong bytes served after truncation: $(cat "$WORK/r-t3.json")"
check "tamper: cached image and partial truncated under the export: every read exact" readers_ok "$WORK/r-t3.json" $((2 * CHUNKS))
# the repository's third.raw changed in place (size and mtime kept) while it
# is exported: 40 blocks of its second half, which only it holds
python3 - "$REPO/third.raw" > "$WORK/changed.blocks" <<'PY'
import os, random, sys
st = os.stat(sys.argv[1])
r = random.Random(43)
blocks = sorted(b for b in r.sample(range(512, 1024), 60) if b % 9 != 4)[:40]
with open(sys.argv[1], "r+b") as f:
    for b in blocks:
        f.seek(b * 4096 + 99)
        f.write(b"tampered")
os.utime(sys.argv[1], ns=(st.st_atime_ns, st.st_mtime_ns))
print(" ".join(map(str, blocks)))
PY
$CLIENTS readers "$(serve_uri t1 third.raw)" "$WORK/third.ref" 2 --chunk 4096 > "$WORK/r-t4.json" ||
  fail "tamper: wrong bytes served from the changed repository image: $(cat "$WORK/r-t4.json")"
check "tamper: repository image changed under the export: never a wrong byte" test "$(field "$WORK/r-t4.json" wrong)" = 0
check "tamper: ... the 40 changed blocks are I/O errors to both readers" test "$(field "$WORK/r-t4.json" eio)" = 80
check "tamper: ... every other block exact" test "$(field "$WORK/r-t4.json" ok)" = $((2 * (1024 - 40)))
serve_stop t1
check "tamper: serve stopped cleanly, the damage counted" test "$(serve_stat t1 cache_damaged)" -gt 0
check "tamper: no sanitizer report" no_sanitizer_report
cp "$WORK/third.ref" "$REPO/third.raw"

# ---- 4. 200 clients, 50 hanging up mid-request --------------------------------
serve_start m1 --from "$NGINX_URL" --cache "$WORK/cache-many" base.raw
NBDKIT=$(nbdkit_pid m1)
fds() { ls "/proc/$NBDKIT/fd" | wc -l; }
# settle FDS: wait (bounded) until nbdkit has closed the connections
settle() {
  local i
  for i in $(seq 300); do [ "$(fds)" -le "$1" ] && return 0; sleep 0.1; done
  return 1
}
fds_idle=$(fds)
for wave in 1 2; do
  $CLIENTS many "$WORK/m1.sock" base.raw "$REPO/base.raw" --clients 200 --hangups 50 --pid "$NBDKIT" \
    --seed "$wave" > "$WORK/r-m$wave.json" || fail "wave $wave: wrong bytes: $(cat "$WORK/r-m$wave.json")"
  check "wave $wave: 150 clients x 4 reads, all exact, none failed" readers_ok "$WORK/r-m$wave.json" 600
  check "wave $wave: 50 clients hung up mid-request" test "$(field "$WORK/r-m$wave.json" hangups)" = 50
  check "wave $wave: all 200 were connected at once ($(field "$WORK/r-m$wave.json" fds_connected) fds, $fds_idle idle)" \
    test "$(field "$WORK/r-m$wave.json" fds_connected)" -ge $((fds_idle + 200))
  check "wave $wave: nbdkit is still up" kill -0 "$NBDKIT"
  [ "$wave" = 1 ] && { settle $((fds_idle + 16)) || true; fds_after1=$(fds); }
done
check "after both waves: nbdkit's fds back to $fds_after1 (idle $fds_idle, after the first wave $fds_after1)" \
  settle "$fds_after1"
check "... which is the idle count plus what the cache opened ($fds_after1 <= $fds_idle + 16)" \
  test "$fds_after1" -le $((fds_idle + 16))
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$NBDKIT/status")
# nbdkit 1.32 keeps a request buffer per connection the size of its largest
# request (up to 2 MiB for the clients that hang up): 512 MiB is generous
check "after both waves: nbdkit's peak memory $((hwm / 1024)) MiB < 512 MiB" test "$hwm" -lt $((512 * 1024))
nbdcopy "$(serve_uri m1 base.raw)" "$WORK/m.raw"
check "after both waves: a full read is exact" cmp "$WORK/m.raw" "$REPO/base.raw"
serve_stop m1
check "after both waves: serve stops cleanly, no read error" test "$(serve_stat m1 read_errors)" = 0
check "many clients: no sanitizer report" no_sanitizer_report
echo "PASS test_serve_hostile"
