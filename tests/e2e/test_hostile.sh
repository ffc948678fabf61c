#!/usr/bin/env bash
# Hostile inputs and environments, end to end: output paths that are links,
# devices and FIFOs; write errors; huge sparse images; damaged, swapped and
# hostile index files; FIFOs in the repository; a trickling HTTP server.
source "$(dirname "$0")/lib.sh"

# A small repository: two related images.
R=$WORK/repo; mkdir -p "$R"
python3 - "$R" <<'PY'
import os, random, sys
r = random.Random(11); bs = 4096; d = sys.argv[1]
blk = lambda: bytes(r.getrandbits(8) for _ in range(64)) * (bs // 64)
base = [blk() for _ in range(40)]
open(os.path.join(d, "a.raw"), "wb").write(b"".join(base))
open(os.path.join(d, "b.raw"), "wb").write(b"".join(base[:25] + [blk() for _ in range(10)] + [bytes(bs)] * 5))
PY
age_files "$R"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity "$R" > "$WORK/want.csv"

# --- -o: links written through, devices and FIFOs written directly, write errors
echo old > "$WORK/target.csv"
ln -s target.csv "$WORK/link.csv"
"$IMGDEDUP" similarity -o "$WORK/link.csv" "$R"
check "-o through a symlink keeps the link" test -L "$WORK/link.csv"
check "-o through a symlink writes the file it names" cmp "$WORK/want.csv" "$WORK/target.csv"
ln -s nowhere/x.csv "$WORK/dangling.csv"
rc=0; "$IMGDEDUP" similarity -o "$WORK/dangling.csv" "$R" 2> "$WORK/err" || rc=$?
check "-o on a dangling symlink is refused (exit 1)" test "$rc" = 1
check "... with a message saying so" grep -q "dangling" "$WORK/err"
check "... and the link is left alone" test -L "$WORK/dangling.csv"
mkfifo "$WORK/fifo"
cat "$WORK/fifo" > "$WORK/from-fifo" & reader=$!
"$IMGDEDUP" similarity -o "$WORK/fifo" "$R"
wait $reader
check "-o on a FIFO writes into it" cmp "$WORK/want.csv" "$WORK/from-fifo"
check "... and the FIFO stays a FIFO" test -p "$WORK/fifo"
if mknod "$WORK/full" c 1 7 2> /dev/null; then # a private /dev/full (root only)
  rc=0; "$IMGDEDUP" similarity -o "$WORK/full" "$R" 2> "$WORK/err" || rc=$?
  check "-o on a full device fails (exit 1)" test "$rc" = 1
  check "... naming it and the reason" grep -q "full: No space left on device" "$WORK/err"
  check "... and the device node stays a device" test -c "$WORK/full"
else
  echo "skip: -o on a device node (mknod needs root)"
fi
# a write error half-way (the file size limit): exit 1, the old file kept
echo "previous" > "$WORK/s.svg"
rc=0; (trap '' XFSZ; ulimit -f 4; exec "$IMGDEDUP" similarity --format svg -o "$WORK/s.svg" "$R") 2> "$WORK/err" || rc=$?
check "-o write error is exit status 1" test "$rc" = 1
check "... naming the file and the reason" grep -q "s.svg: File too large" "$WORK/err"
check "... leaving the previous file whole" test "$(cat "$WORK/s.svg")" = previous
check "... and no temporary behind" test -z "$(ls "$WORK" | grep '\.tmp\.')"

# --- cost grows with data, not virtual size: a 4 TiB qcow2 and a 1 TiB sparse
# raw with 50 MiB of data go through scan, map, pack, similarity and verify in well
# under 256 MiB (peak RSS by /usr/bin/time -v)
H=$WORK/huge; mkdir -p "$H"
qemu-img create -q -f qcow2 "$H/t4.qcow2" 4T
truncate -s 1T "$H/t1.raw"
python3 - "$H/t1.raw" <<'PY'
import random, sys
r = random.Random(5); f = open(sys.argv[1], "r+b")
for off, mib in ((0, 10), (3 << 30, 20), (700 << 30, 15), ((1 << 40) - (5 << 20), 5)):
    f.seek(off); f.write(r.randbytes(mib << 20))
PY
limit_kib=$((256 * 1024)) # (an ASan build measures about 40 MiB here too)
# peak STEP CMD...: run CMD under /usr/bin/time -v, fail unless it succeeds in
# less than limit_kib of peak resident memory
peak() {
  local step=$1; shift
  local rc=0
  /usr/bin/time -v -o "$WORK/time.$step" "$@" > "$WORK/out.$step" 2> "$WORK/err.$step" || rc=$?
  [ "$rc" = 0 ] || { cat "$WORK/err.$step" >&2; fail "$step on huge sparse images: exit $rc"; }
  local kib; kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.$step")
  check "$step on a 4 TiB qcow2 + 1 TiB sparse raw: peak RSS $((kib / 1024)) MiB < $((limit_kib / 1024)) MiB" \
    test "$kib" -lt "$limit_kib"
}
peak scan "$IMGDEDUP" scan --json "$H"
check "scan hashed the 50 MiB of data only" test "$(json_get "$WORK/out.scan" bytes_hashed)" = $((50 << 20))
check "scan counted every block" test "$(json_get "$WORK/out.scan" blocks)" = $(((5 << 40) / 4096))
check "scan counted the zero blocks" test "$(json_get "$WORK/out.scan" zero_blocks)" = $(((5 << 40) / 4096 - 12800))
peak map "$IMGDEDUP" map --json "$H"
peak pack "$IMGDEDUP" pack -q "$H"
peak similarity "$IMGDEDUP" similarity "$H"
check "similarity of the two is 0" grep -q '^t1.raw,1.000000,0.000000$' "$WORK/out.similarity"
peak verify "$IMGDEDUP" verify "$H"
peak verify-deep "$IMGDEDUP" verify --deep "$H"
peak info "$IMGDEDUP" info --json "$H" t4.qcow2
# deploy and serve of both: a map of runs, per-digest plans, a sparse output
peak deploy-raw "$IMGDEDUP" deploy --from "$H" --cache "$WORK/hc" --no-pack --json -q t1.raw
check "deploy of the 1 TiB raw: byte-exact where the data is" \
  cmp -n $((25 << 20)) "$H/t1.raw" "$WORK/hc/images/t1.raw"
check "deploy of the 1 TiB raw (image ranges, not the pack): fetched the 50 MiB of data" \
  test "$(json_get "$WORK/out.deploy-raw" bytes_fetched)" = $((50 << 20))
peak deploy-qcow2 "$IMGDEDUP" deploy --from "$H" --cache "$WORK/hc" -o "$WORK/t4.out" --json -q t4.qcow2
check "deploy of the 4 TiB qcow2: 4 TiB, sparse" test "$(stat -c %s "$WORK/t4.out")" = $((4 << 40))
check "deploy of the 4 TiB qcow2: nothing fetched" test "$(json_get "$WORK/out.deploy-qcow2" bytes_fetched)" = 0
rm -f "$WORK/t4.out"
source "$TESTS_DIR/serve.sh"
/usr/bin/time -v -o "$WORK/time.serve" "$IMGDEDUP" serve --socket "$WORK/hs.sock" --json \
  --from "$H" --cache "$WORK/hs" t1.raw t4.qcow2 > "$WORK/hs.json" 2> "$WORK/hs.err" &
hspid=$!
for i in $(seq 300); do [ -S "$WORK/hs.sock" ] && nbdinfo --size "nbd+unix:///t1.raw?socket=$WORK/hs.sock" >/dev/null 2>&1 && break; sleep 0.1; done
nbdinfo --map "nbd+unix:///t4.qcow2?socket=$WORK/hs.sock" > "$WORK/hs.map"
check "serve of the 4 TiB qcow2: one hole" test "$(wc -l < "$WORK/hs.map")" = 1
# the first 10 MiB through NBD (nbdcopy stops when head has enough)
{ nbdcopy "nbd+unix:///t1.raw?socket=$WORK/hs.sock" - 2>/dev/null || true; } | head -c $((10 << 20)) > "$WORK/hs.head"
check "serve of the 1 TiB raw: the first 10 MiB exact" cmp "$WORK/hs.head" <(head -c $((10 << 20)) "$H/t1.raw")
pkill -TERM -P "$hspid" # imgdedup serve, under /usr/bin/time
wait "$hspid" || fail "serve of the huge images: exit $?: $(cat "$WORK/hs.err")"
kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.serve")
check "serve of both (imgdedup; nbdkit runs the plugin): peak RSS $((kib / 1024)) MiB < 256 MiB" test "$kib" -lt "$limit_kib"

# --- FIFOs where files were: refused at once, never waited on
F=$WORK/fifo-repo; cp -a "$R" "$F"
rm "$F/b.raw"; mkfifo "$F/b.raw"
rc=0; timeout 20 "$IMGDEDUP" verify --deep "$F" 2> "$WORK/err" || rc=$?
check "verify --deep with an image replaced by a FIFO: exit 1, no hang (rc $rc)" test "$rc" = 1
check "... naming the FIFO" grep -q "b.raw: not a regular file (a FIFO)" "$WORK/err"
mv "$F/.imgdedup/catalog" "$WORK/catalog.saved"; mkfifo "$F/.imgdedup/catalog"
for cmd in ls "similarity" "map" "verify" "scan"; do
  rc=0; timeout 20 "$IMGDEDUP" $cmd "$F" > /dev/null 2> "$WORK/err" || rc=$?
  check "$cmd with the catalog replaced by a FIFO: exit 1, no hang (rc $rc)" test "$rc" = 1
  check "... naming it" grep -q "catalog: not a regular file" "$WORK/err"
done
rm "$F/.imgdedup/catalog"; mv "$WORK/catalog.saved" "$F/.imgdedup/catalog"

# --- a write error on stdout is exit status 1, naming stdout and the reason
"$IMGDEDUP" map -q "$R"
C=$WORK/cache
cp -a "$R" "$WORK/pack-repo" # (a pack in R would serve the trickle test's blocks)
"$IMGDEDUP" deploy -q --from "$R" --cache "$C" a.raw
cmp "$R/a.raw" "$C/images/a.raw" || fail "deploy into the cache"
while IFS= read -r cmd; do
  rc=0; $cmd > /dev/full 2> "$WORK/err" || rc=$?
  check "'${cmd#"$IMGDEDUP" }' > /dev/full: exit 1 (rc $rc)" test "$rc" = 1
  check "... saying 'stdout: No space left on device'" grep -q "stdout: No space left on device" "$WORK/err"
done <<CMDS
$IMGDEDUP ls $R
$IMGDEDUP ls --json $R
$IMGDEDUP info $R a.raw
$IMGDEDUP info --blocks $R a.raw
$IMGDEDUP info --json $R b.raw
$IMGDEDUP map --json $R
$IMGDEDUP scan --json $R
$IMGDEDUP similarity $R
$IMGDEDUP similarity --format json $R
$IMGDEDUP similarity --format svg $R
$IMGDEDUP similarity --top 1 $R
$IMGDEDUP verify $R
$IMGDEDUP pack --json $WORK/pack-repo
$IMGDEDUP cache ls $C
$IMGDEDUP cache ls --json $C
$IMGDEDUP deploy --json --from $R --cache $C -o $WORK/b.out b.raw
$IMGDEDUP --version
$IMGDEDUP --help
CMDS
check "deploy still wrote its output" cmp "$R/b.raw" "$WORK/b.out"
rc=0; "$IMGDEDUP" info --blocks "$H" t4.qcow2 > /dev/full 2> /dev/null || rc=$?
check "info --blocks of a 4 TiB image > /dev/full stops early: exit 1" test "$rc" = 1

# --- damaged index files are noticed and rebuilt by the next (cron) run
D=$WORK/damage; cp -a "$R" "$D"; rm -rf "$D/.imgdedup"
"$IMGDEDUP" scan -q "$D"; "$IMGDEDUP" map -q "$D"
amap=$(ls "$D"/.imgdedup/maps/*.map | head -1)
python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(40); b = f.read(1); f.seek(40); f.write(bytes([b[0] ^ 0xff]))' "$amap"
"$IMGDEDUP" map --json "$D" > "$WORK/map.json" 2> "$WORK/err"
check "map repairs a map with a flipped byte (repaired 1)" test "$(json_get "$WORK/map.json" repaired)" = 1
check "... and says so" grep -q "checksum mismatch.*rebuilt" "$WORK/err"
"$IMGDEDUP" deploy -q --from "$D" --cache "$WORK/cache-d" -o "$WORK/a.out" a.raw
"$IMGDEDUP" deploy -q --from "$D" --cache "$WORK/cache-d" -o "$WORK/b.out2" b.raw
check "deploy works from the repaired maps" cmp "$D/a.raw" "$WORK/a.out"
check "... both of them" cmp "$D/b.raw" "$WORK/b.out2"
"$IMGDEDUP" map --json "$D" > "$WORK/map.json"
check "the next map run repairs nothing" test "$(json_get "$WORK/map.json" repaired)" = 0
lists=("$D"/.imgdedup/blocks/*)
cp "${lists[0]}" "${lists[1]}" # one list swapped for another: valid, wrong name
"$IMGDEDUP" scan --json "$D" > "$WORK/scan.json" 2> "$WORK/err"
check "scan repairs a swapped block list (repaired 1)" test "$(json_get "$WORK/scan.json" repaired)" = 1
check "... reading that image again" test "$(json_get "$WORK/scan.json" scanned)" = 1
check "... and says so" grep -q "not the one the catalog names.*read again" "$WORK/err"
python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(50); b = f.read(1); f.seek(50); f.write(bytes([b[0] ^ 0xff]))' "$(ls "$D"/.imgdedup/blocks/* | head -1)"
"$IMGDEDUP" scan --json "$D" > "$WORK/scan.json" 2> /dev/null
check "scan repairs a block list with a flipped byte (repaired 1)" test "$(json_get "$WORK/scan.json" repaired)" = 1
"$IMGDEDUP" map -q "$D"
check "verify then finds the index intact" "$IMGDEDUP" verify -q "$D"

# --- verify applies deploy's path rules, reads nothing outside the
# repository, and checks each map against its block list and its image
V=$WORK/verify; mkdir -p "$V"; cp "$R/a.raw" "$R/b.raw" "$V/"
"$IMGDEDUP" scan -q "$V"; "$IMGDEDUP" map -q "$V"
"$IMGDEDUP" info --json "$V" a.raw > "$WORK/a.json"
"$IMGDEDUP" info --blocks "$V" a.raw > "$WORK/a.blocks"
a_fields="$(json_get "$WORK/a.json" block_list)|$(json_get "$WORK/a.json" size)|$(json_get "$WORK/a.json" blocks)|$(json_get "$WORK/a.json" zero_blocks)|$(json_get "$WORK/a.json" distinct_blocks)"
CRAFT="python3 $TESTS_DIR/idxcraft.py"
cp "$V/.imgdedup/catalog" "$WORK/catalog.good"
one_entry() { # one_entry ID: a catalog whose only entry is ID with a.raw's list
  local k=${a_fields%%|*} rest=${a_fields#*|}
  $CRAFT catalog "$V/.imgdedup/catalog" 4096 "$1|$1||$k|$rest"
}
for id in "../../../../etc/passwd" "/etc/passwd" "sub/../a.raw"; do
  one_entry "$id"
  rc=0; "$IMGDEDUP" verify --deep "$V" 2> "$WORK/err" || rc=$?
  check "verify --deep with catalog id '$id': exit 1 (rc $rc)" test "$rc" = 1
  check "... refused as deploy refuses it" grep -q "not a relative path inside the repository" "$WORK/err"
  check "... and nothing read through it" test "$(grep -c "differs\|image is" "$WORK/err")" = 0
done
mkdir -p "$WORK/outside"; cp "$V/a.raw" "$WORK/outside/x.raw"
ln -s "$WORK/outside" "$V/sub"; ln -s ../outside/x.raw "$V/l.raw"; ln -s a.raw "$V/in.raw"
for id in sub/x.raw l.raw; do
  one_entry "$id"
  rc=0; "$IMGDEDUP" verify --deep "$V" 2> "$WORK/err" || rc=$?
  check "verify --deep of '$id' through a link out of the repository: exit 1 (rc $rc)" test "$rc" = 1
  check "... not read" grep -q "leads outside the repository.*not read" "$WORK/err"
done
one_entry in.raw
rc=0; "$IMGDEDUP" verify --deep "$V" 2> "$WORK/err" || rc=$?
check "verify --deep of an image replaced by a link inside the repository: exit 1 (rc $rc)" test "$rc" = 1
check "... the link not followed" grep -q "in.raw: is a symbolic link; not followed" "$WORK/err"
rm "$V/sub" "$V/l.raw" "$V/in.raw"
cp "$WORK/catalog.good" "$V/.imgdedup/catalog"
check "verify: the restored index is intact" "$IMGDEDUP" verify -q "$V"
amap="$V/.imgdedup/maps/$(printf %s a.raw | sha256sum | cut -d' ' -f1).map"
bmap="$V/.imgdedup/maps/$(printf %s b.raw | sha256sum | cut -d' ' -f1).map"
$CRAFT map "$amap" a.raw "${a_fields%%|*}" "$(json_get "$WORK/a.json" size)" 4096 "$WORK/a.blocks" 3
rc=0; "$IMGDEDUP" verify "$V" 2> "$WORK/err" || rc=$?
check "verify: a well-formed map with a wrong digest: exit 1 (rc $rc)" test "$rc" = 1
check "... disagreeing with its block list" grep -q "block map of a.raw disagrees with its block list at block 3" "$WORK/err"
$CRAFT map "$amap" a.raw "${a_fields%%|*}" "$(json_get "$WORK/a.json" size)" 4096 "$WORK/a.blocks"
check "verify: the map written right is accepted" "$IMGDEDUP" verify -q "$V"
cp "$bmap" "$amap"
rc=0; "$IMGDEDUP" verify "$V" 2> "$WORK/err" || rc=$?
check "verify: b's map in a's place: exit 1 (rc $rc)" test "$rc" = 1
check "... is the map of another image" grep -q "is the map of another image ('b.raw'), not of a.raw" "$WORK/err"

# --- a server trickling 2 bytes/s is abandoned after --timeout seconds below
# 1 KiB/s: retried (transient), then a clear error; never a hang
FS_PID=
stop_faultserver() { [ -n "${FS_PID:-}" ] && kill "$FS_PID" 2> /dev/null; FS_PID=; true; }
cleanup_fns+=(stop_faultserver)
start_faultserver() { # ARGS...
  rm -f "$WORK/fs.port"
  python3 "$TESTS_DIR/faultserver.py" --root "$R" --port-file "$WORK/fs.port" "$@" &
  FS_PID=$!
  local i; for i in $(seq 100); do [ -s "$WORK/fs.port" ] && break; sleep 0.05; done
  FS_URL=http://127.0.0.1:$(cat "$WORK/fs.port")
}
start_faultserver --trickle 1 --log "$WORK/fs.log"
rc=0; timeout 120 "$IMGDEDUP" deploy --from "$FS_URL" --cache "$WORK/cache-t" --timeout 2 --connections 1 \
  --json -o "$WORK/t.out" a.raw > "$WORK/t.json" 2> "$WORK/t.err" || rc=$?
check "deploy from a server trickling one request: succeeds (rc $rc)" test "$rc" = 0
check "... byte for byte" cmp "$R/a.raw" "$WORK/t.out"
check "... after retrying the trickled request" test "$(json_get "$WORK/t.json" retries)" -ge 1
check "... which it called too slow" grep -qi "too slow" "$WORK/t.err"
check "... and the server did trickle" grep -q TRICKLE "$WORK/fs.log"
stop_faultserver
start_faultserver --trickle 100000
rc=0; timeout 120 "$IMGDEDUP" deploy --from "$FS_URL" --cache "$WORK/cache-t2" --timeout 1 --connections 1 \
  -q -o "$WORK/t2.out" a.raw 2> "$WORK/t2.err" || rc=$?
check "deploy from a server that always trickles: exit 1, no hang (rc $rc)" test "$rc" = 1
check "... a clear error after the retries" grep -q "too slow.*gave up after" "$WORK/t2.err"
check "... and no output" test ! -e "$WORK/t2.out"
stop_faultserver

# --- racily clean: an image written within the timestamp granularity of a
# scan's start is read again by the next run (its mtime recorded unknown)
Z=$WORK/racy; mkdir -p "$Z"; cp "$R/a.raw" "$Z/old.raw"; age_files "$Z"
# (a minute ahead: after the scan's start however slowly it starts, as
# under the sanitizers; one second ahead of a truncated `date` was not)
cp "$R/b.raw" "$Z/fresh.raw"; touch -d "@$(( $(date +%s) + 60 ))" "$Z/fresh.raw"
"$IMGDEDUP" scan --json "$Z" > "$WORK/z1.json"
"$IMGDEDUP" scan --json "$Z" > "$WORK/z2.json"
check "racily clean image read again by the next run" test "$(json_get "$WORK/z2.json" scanned)" = 1
check "... the other one not" test "$(json_get "$WORK/z2.json" unchanged)" = 1
age_files "$Z"
"$IMGDEDUP" scan -q "$Z"
"$IMGDEDUP" scan --json "$Z" > "$WORK/z3.json"
check "once old enough, nothing is read" test "$(json_get "$WORK/z3.json" scanned)" = 0

# --- names with control characters are shown escaped; a file of the wrong
# kind is named by the kind it should be
N=$WORK/names; mkdir -p "$N"
head -c 8192 /dev/urandom > "$N/$(printf 'evil\nname.raw')"
head -c 8192 /dev/urandom > "$N/$(printf 'bell\a\033[31m.raw')"
"$IMGDEDUP" scan -q "$N"
"$IMGDEDUP" ls "$N" > "$WORK/ls.txt"
check "ls: one line per image, newline in a name escaped" test "$(wc -l < "$WORK/ls.txt")" = 3
check "... as \\n" grep -qF 'evil\nname.raw' "$WORK/ls.txt"
check "... other control bytes as \\xNN" grep -qF 'bell\x07\x1b[31m.raw' "$WORK/ls.txt"
check "... and no control byte reaches the terminal" test "$(tr -d '\n' < "$WORK/ls.txt" | LC_ALL=C grep -c '[[:cntrl:]]')" = 0
head -c 200 /dev/urandom > "$N/.imgdedup/catalog"
rc=0; "$IMGDEDUP" ls "$N" 2> "$WORK/err" || rc=$?
check "a junk catalog: exit 1 (rc $rc)" test "$rc" = 1
check "... 'not an imgdedup catalog file'" grep -q "catalog: not an imgdedup catalog file (bad magic)" "$WORK/err"
