#!/usr/bin/env bash
# imgdedup map: every map decoded independently (python3 + zstd CLI) and
# compared with hashlib digests of its image; size goal on a real ext4 image;
# incremental (unchanged index writes nothing), removal, named images, lock.
source "$(dirname "$0")/lib.sh"
R=$WORK/repo; mkdir -p "$R/dir"
python3 - "$R" <<'PY'
import os, random, sys
r = random.Random(3); bs = 4096; d = sys.argv[1]
blk = lambda: bytes(r.getrandbits(8) for _ in range(32)) * (bs // 32)
base = [blk() for _ in range(100)]
with open(d + "/a.raw", "wb") as f: f.write(b"".join(base))
with open(d + "/dir/b.raw", "wb") as f:
    f.write(bytes(bs) * 30 + b"".join(base[:50]) + base[7] * 12 + b"".join(base[10:30]) + b"tail")
PY
src=$WORK/tree; mkdir -p "$src"; for p in $(ls /usr/share/doc | head -n 150); do cp -a "/usr/share/doc/$p" "$src/" 2>/dev/null || true; done
mkext4 "$R/fs.img" 48 "$src"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map --json "$R" > "$WORK/m1.json"
I=$R/.imgdedup
mapfile_of() { echo "$I/maps/$(printf %s "$1" | sha256sum | cut -d' ' -f1).map"; }
check "three maps" test "$(json_get "$WORK/m1.json" images)" = 3 -a "$(ls "$I"/maps/*.map | wc -l)" = 3
total=0
for id in a.raw dir/b.raw fs.img; do
  out=$(python3 "$TESTS_DIR/mapref.py" "$(mapfile_of "$id")" "$R/$id" 4096) || fail "map of $id does not decode to its blocks"
  echo "ok: map of $id decodes to its blocks ($out)"
  total=$((total + $(stat -c %s "$(mapfile_of "$id")")))
done
check "map_bytes is the size of the maps on disk" test "$(json_get "$WORK/m1.json" map_bytes)" = $total
# size goal on the real ext4 image
out=$(python3 "$TESTS_DIR/mapref.py" "$(mapfile_of fs.img)" "$R/fs.img" 4096)
distinct=${out#distinct=}; distinct=${distinct%% *}; bytes=${out##*bytes=}
echo "ext4 map: $bytes bytes for $distinct distinct blocks (goal $(( distinct * 32 * 105 / 100 + 4096 )))"
check "ext4 map within 1.05 x 32 B per distinct block + 4 KiB" test $((bytes * 100)) -le $((distinct * 3360 + 409600))
check "ext4 image has content" test "$distinct" -gt 1000

# unchanged index: nothing written at all
snap() { find "$I/maps" "$I/blocktable" -type f -printf '%p %i %T@\n' | sort; }
snap > "$WORK/before"
"$IMGDEDUP" map --json "$R" > "$WORK/m2.json"
snap > "$WORK/after"
check "re-run writes nothing" diff "$WORK/before" "$WORK/after"
check "re-run reports 0 written" test "$(json_get "$WORK/m2.json" written)" = 0
check "same map_bytes" test "$(json_get "$WORK/m2.json" map_bytes)" = $total

# a changed image gets a new map; the others are kept
head -c 4096 /dev/urandom | dd of="$R/a.raw" bs=4096 seek=5 conv=notrunc 2>/dev/null
"$IMGDEDUP" scan -q "$R"
bmap=$(stat -c '%i %Y' "$(mapfile_of dir/b.raw)")
"$IMGDEDUP" map --json "$R" > "$WORK/m3.json"
check "one map rewritten" test "$(json_get "$WORK/m3.json" written)" = 1
check "other maps untouched" test "$(stat -c '%i %Y' "$(mapfile_of dir/b.raw)")" = "$bmap"
python3 "$TESTS_DIR/mapref.py" "$(mapfile_of a.raw)" "$R/a.raw" 4096 >/dev/null || fail "new map of a.raw wrong"

# removed image: its map goes
rm "$R/dir/b.raw"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map --json "$R" > "$WORK/m4.json"
check "removed image's map deleted" test ! -e "$(mapfile_of dir/b.raw)" -a "$(json_get "$WORK/m4.json" removed)" = 1
check "images count follows" test "$(json_get "$WORK/m4.json" images)" = 2

# named images only
cp "$R/a.raw" "$R/copy.raw"; echo x >> "$R/fs.img"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map --json "$R" copy.raw > "$WORK/m5.json"
check "only the named image mapped" test "$(json_get "$WORK/m5.json" written)" = 1 -a -e "$(mapfile_of copy.raw)"
"$IMGDEDUP" map -q "$R"
python3 "$TESTS_DIR/mapref.py" "$(mapfile_of fs.img)" "$R/fs.img" 4096 >/dev/null || fail "fs.img map after append"
echo "ok: later full run maps the rest"

# failures: unknown image, no index, locked index
set +e
"$IMGDEDUP" map "$R" nope.raw 2>"$WORK/e1"; rc1=$?
"$IMGDEDUP" map "$WORK/empty" 2>"$WORK/e2"; rc2=$?
flock "$I/lock" sleep 3 & holder=$!
sleep 0.5
"$IMGDEDUP" map --no-wait "$R" 2>"$WORK/e3"; rc3=$?
wait $holder
"$IMGDEDUP" map --bogus "$R" 2>/dev/null; rc4=$?
set -e
check "unknown image: exit 1 naming it" test $rc1 = 1 && grep -q nope.raw "$WORK/e1"
check "no index: exit 1" test $rc2 = 1 -a -s "$WORK/e2"
check "locked index with --no-wait: exit 1, clear message" test $rc3 = 1 && grep -q locked "$WORK/e3"
check "bad option: exit 2" test $rc4 = 2
# a corrupted map is detected by the parser
m=$(mapfile_of a.raw); cp "$m" "$WORK/good.map"
printf '\xff' | dd of="$m" bs=1 seek=40 conv=notrunc 2>/dev/null
python3 "$TESTS_DIR/mapref.py" "$m" "$R/a.raw" 4096 >/dev/null 2>&1 && fail "corruption not visible"
# ...and verify names it, as it names a damaged block-table file
set +e
"$IMGDEDUP" verify "$R" 2>"$WORK/v1"; rc5=$?
set -e
check "verify: exit 1 naming the damaged map" test $rc5 = 1 && grep -q "$(basename "$m")" "$WORK/v1"
cp "$WORK/good.map" "$m"
"$IMGDEDUP" verify -q "$R" || fail "verify after restoring the map"
bt=$(ls "$I"/blocktable/* | tail -n 1)
printf '\xff' | dd of="$bt" bs=1 seek=40 conv=notrunc 2>/dev/null
set +e
"$IMGDEDUP" verify "$R" 2>"$WORK/v2"; rc6=$?
set -e
check "verify: exit 1 naming the damaged block table file" test $rc6 = 1 && grep -q "$(basename "$bt")" "$WORK/v2"
echo "all map checks passed"
