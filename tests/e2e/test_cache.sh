#!/usr/bin/env bash
# The node cache under the conditions that used to break it, end to end
# (real nbdkit through serve, nginx, the imgdedup binary):
#  1. serve --fill never turns a partial image into a complete one without
#     checking every block against the current map: the repository image
#     changed in place since the partial was filled, bytes of the partial
#     flipped offline, the partial truncated to 0;
#  2. every id has a cache name of its own (base.qcow2 and base.qcow2.raw
#     used to share one) within NAME_MAX (a 271-character id), and images an
#     older version cached under the shared name move to their own;
#  3. cache gc on a cache whose filesystem is full deletes before it writes
#     its index, and succeeds;
#  4. a complete image damaged behind imgdedup's back is checked and repaired
#     in place once (only its damaged blocks fetched), the next run is clean;
#  5. cache ls counts blocks of the image (repeats included) present against
#     the image's data blocks: an image read in full is 100% present.
SERVE_WAIT=600   # tenths of a second a background fill may take before the test gives up
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy nbdinfo qemu-img; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
T=$WORK/t
BS=4096
mkdir -p "$REPO" "$T/fs"
cp -r /usr/share/common-licenses "$T/fs/lic"
python3 -c 'import random,sys; r=random.Random(21); open(sys.argv[1],"wb").write(r.randbytes(2000000))' "$T/fs/rnd.bin"
mkext4 "$REPO/a.raw" 8 "$T/fs"
cp "$REPO/a.raw" "$REPO/b.raw"
cp "$REPO/a.raw" "$REPO/c.raw"
# an image whose content repeats: 40 patterns over 300 blocks, zero blocks
python3 - "$REPO/rep.raw" <<'PY'
import random, sys
r = random.Random(24)
pat = [r.randbytes(4096) for _ in range(40)]
out = bytearray()
for i in range(300):
    out += bytes(4096) if i % 7 == 0 else pat[i % 40]
out += b"tail" * 100
open(sys.argv[1], "wb").write(out)
PY
# ids that older versions cached under one name (base.qcow2 -> base.qcow2.raw),
# and an id too long for a file name once escaped (271 characters)
qemu-img convert -f raw -O qcow2 "$REPO/rep.raw" "$REPO/base.qcow2"
QREF=$T/base.qcow2.ref   # its virtual disk (the size rounded up to 512 bytes)
qemu-img convert -f qcow2 -O raw "$REPO/base.qcow2" "$QREF"
cp "$REPO/c.raw" "$REPO/base.qcow2.raw"
LONGDIR=$(printf 'd%.0s' $(seq 200))
LONGID=$LONGDIR/$(printf 'x%.0s' $(seq 66)).raw
mkdir -p "$REPO/$LONGDIR"
cp "$REPO/rep.raw" "$REPO/$LONGID"
[ ${#LONGID} = 271 ] || fail "the long id has ${#LONGID} characters"
age_files "$REPO"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$REPO"

# the image of ID as the cache holds it once complete (images/<cache name>)
cached() { echo "$1/images/$2"; }
# wait until the image ID of cache C is complete (renamed into place, its
# journal gone), for at most SERVE_WAIT tenths of a second
wait_complete() {
  local i
  for i in $(seq "$SERVE_WAIT"); do
    [ -e "$1/images/$2" ] && [ ! -e "$1/images/$2.present" ] && return 0
    sleep 0.1
  done
  fail "$2 in $1 never became complete: $(cat "$WORK"/*.err 2>/dev/null | tail -n 5)"
}
# flip N bytes of FILE at random offsets inside its data (seed S)
flip_bytes() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
# offsets inside data regions (a partial image is sparse)
regions, off = [], 0
while off < size:
    try:
        ds = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    de = os.lseek(fd, ds, os.SEEK_HOLE)
    regions.append((ds, de))
    off = de
assert regions, "no data in " + path
for _ in range(n):
    a, b = r.choice(regions)
    at = r.randrange(a, b)
    c = os.pread(fd, 1, at)
    os.pwrite(fd, bytes([c[0] ^ 0x5a]), at)
os.close(fd)
PY
}

# ---- 1. --fill checks every block before the image is complete -------------
# a) the repository image changed in place (same size) after a serve read it
serve_start f1 --from "$NGINX_URL" --cache "$WORK/c1" a.raw
nbdcopy --no-extents "$(serve_uri f1 a.raw)" "$WORK/f1.raw"
serve_stop f1
cmp "$WORK/f1.raw" "$REPO/a.raw" || fail "first read of a.raw differs"
python3 - "$REPO/a.raw" <<'PY'
import random, sys
d = bytearray(open(sys.argv[1], "rb").read())
r = random.Random(22)
data = [b for b in range(len(d) // 4096) if d[b * 4096:(b + 1) * 4096].count(0) != 4096]
for b in r.sample(data, 300):
    d[b * 4096:(b + 1) * 4096] = r.randbytes(4096)
open(sys.argv[1], "r+b").write(d)
PY
age_files "$REPO"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
serve_start f2 --from "$NGINX_URL" --cache "$WORK/c1" --fill a.raw
wait_complete "$WORK/c1" a.raw
serve_stop f2
check "changed source: the filled image is the current one" cmp "$(cached "$WORK/c1" a.raw)" "$REPO/a.raw"
"$IMGDEDUP" cache ls --json "$WORK/c1" > "$WORK/ls1.json"
check "changed source: cache ls lists one complete image" python3 - "$WORK/ls1.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["images"]
sys.exit(not (len(v) == 1 and not v[0]["partial"]))
PY
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c1" -o "$WORK/f2.raw" --json -q a.raw > "$WORK/f2.json"
cmp "$WORK/f2.raw" "$REPO/a.raw" || fail "deploy from the filled cache differs"
check "changed source: a deploy from the filled cache fetches nothing" test "$(json_get "$WORK/f2.json" bytes_fetched)" = 0

# b) 50 bytes of the partial flipped offline, its journal intact
serve_start g1 --from "$NGINX_URL" --cache "$WORK/c2" b.raw
nbdcopy --no-extents "$(serve_uri g1 b.raw)" "$WORK/g1.raw"
serve_stop g1
flip_bytes "$WORK/c2/images/b.raw.partial" 50 23
serve_start g2 --from "$NGINX_URL" --cache "$WORK/c2" --fill b.raw
wait_complete "$WORK/c2" b.raw
serve_stop g2
check "flipped partial: the filled image is exact" cmp "$(cached "$WORK/c2" b.raw)" "$REPO/b.raw"
check "flipped partial: the damaged blocks were fetched again" test "$(serve_stat g2 bytes_fetched)" -gt 0

# c) the partial truncated to 0 bytes, its journal intact
serve_start h1 --from "$NGINX_URL" --cache "$WORK/c3" c.raw
nbdcopy --no-extents "$(serve_uri h1 c.raw)" "$WORK/h1.raw"
serve_stop h1
: > "$WORK/c3/images/c.raw.partial"
serve_start h2 --from "$NGINX_URL" --cache "$WORK/c3" --fill c.raw
wait_complete "$WORK/c3" c.raw
serve_stop h2
check "truncated partial: the filled image is exact" cmp "$(cached "$WORK/c3" c.raw)" "$REPO/c.raw"
read -r _ NEW_C _ _ < <(serve_expect "$REPO/c.raw" $BS)
check "truncated partial: every distinct block fetched again" test "$(serve_stat h2 bytes_fetched)" = $((NEW_C * BS))

# ---- 2. cache names: one per id, within NAME_MAX, old caches moved ---------
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c6" -q base.qcow2 ||
  fail "deploy of base.qcow2 failed"
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c6" -q base.qcow2.raw 2> "$WORK/n1.err" ||
  fail "deploy of base.qcow2.raw beside base.qcow2: $(cat "$WORK/n1.err")"
check "names: base.qcow2 cached under its own name" cmp "$WORK/c6/images/base.qcow2%.raw" "$QREF"
check "names: base.qcow2.raw cached under its own name" cmp "$WORK/c6/images/base.qcow2.raw" "$REPO/base.qcow2.raw"
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c6" -q "$LONGID" 2> "$WORK/n2.err" ||
  fail "deploy of a 271-character id: $(cat "$WORK/n2.err")"
LONGNAME=$(cd "$WORK/c6/images" && ls | grep '^dddd')
check "names: the long id is cached under a name of ${#LONGNAME} bytes" test "${#LONGNAME}" -le 247
check "names: the long id's image is exact" cmp "$WORK/c6/images/$LONGNAME" "$REPO/$LONGID"
# serve of all three in one cache: a partial each, never one for two
serve_start n3 --from "$NGINX_URL" --cache "$WORK/c7" --fill base.qcow2 base.qcow2.raw "$LONGID"
nbdcopy --no-extents "$(serve_uri n3 base.qcow2)" "$WORK/n3a.raw"
nbdcopy --no-extents "$(serve_uri n3 base.qcow2.raw)" "$WORK/n3b.raw"
nbdcopy --no-extents "nbd+unix:///$LONGID?socket=$WORK/n3.sock" "$WORK/n3c.raw"
wait_complete "$WORK/c7" 'base.qcow2%.raw'
wait_complete "$WORK/c7" base.qcow2.raw
wait_complete "$WORK/c7" "$LONGNAME"
serve_stop n3
cmp "$WORK/n3a.raw" "$QREF" && cmp "$WORK/n3b.raw" "$REPO/base.qcow2.raw" &&
  cmp "$WORK/n3c.raw" "$REPO/$LONGID" || fail "serve of the three ids: a read differs"
check "names: serve --fill completes all three" test "$(serve_stat n3 exports_complete)" = 3
check "names: the filled images are exact" cmp "$WORK/c7/images/base.qcow2%.raw" "$QREF"
check "names: ... all of them" cmp "$WORK/c7/images/base.qcow2.raw" "$REPO/base.qcow2.raw"
# an old cache: base.qcow2 under the name base.qcow2.raw, as older versions
# left it; a deploy of base.qcow2.raw moves it to base.qcow2's name first
mkdir -p "$WORK/c8/images"
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c8" -o "$WORK/c8/images/base.qcow2.raw" -q base.qcow2
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c8" --json -q base.qcow2.raw > "$WORK/n4.json" 2> "$WORK/n4.err" ||
  fail "old cache: deploy of base.qcow2.raw: $(cat "$WORK/n4.err")"
check "old cache: base.qcow2's image moved to its name" cmp "$WORK/c8/images/base.qcow2%.raw" "$QREF"
check "old cache: base.qcow2.raw deployed under its name" cmp "$WORK/c8/images/base.qcow2.raw" "$REPO/base.qcow2.raw"
"$IMGDEDUP" cache ls --json "$WORK/c8" > "$WORK/ls8.json"
check "old cache: the index follows (two complete images, both present)" python3 - "$WORK/ls8.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["images"]
sys.exit(not (len(v) == 2 and all(i["present"] and not i["partial"] for i in v)))
PY
# ... and a serve of base.qcow2 on an old cache finds its image complete
mkdir -p "$WORK/c9/images"
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c9" -o "$WORK/c9/images/base.qcow2.raw" -q base.qcow2
serve_start n5 --from "$NGINX_URL" --cache "$WORK/c9" base.qcow2
nbdcopy --no-extents "$(serve_uri n5 base.qcow2)" "$WORK/n5.raw"
serve_stop n5
cmp "$WORK/n5.raw" "$QREF" || fail "old cache: serve of base.qcow2 differs"
check "old cache: serve moved base.qcow2's image to its name" cmp "$WORK/c9/images/base.qcow2%.raw" "$QREF"
check "old cache: serve read it all locally" test "$(serve_stat n5 bytes_fetched)" = 0
check "old cache: no partial image made" test ! -e "$WORK/c9/images/base.qcow2%.raw.partial"

# ---- 3. cache gc frees a full cache ---------------------------------------
# A filesystem of its own that the cache fills: a small tmpfs (mounting
# needs root, which CI has).
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: cache gc on a full filesystem: needs root to mount a small tmpfs (uid $(id -u))"
else
  MNT=$WORK/full
  mkdir -p "$MNT"
  mount -t tmpfs -o size=16m tmpfs "$MNT" || fail "cannot mount a tmpfs on $MNT"
  unmount_full() { umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
  cleanup_fns=(unmount_full "${cleanup_fns[@]}")
  "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$MNT/cache" -q b.raw
  "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$MNT/cache" -q c.raw
  # everything left taken: the filesystem is full
  dd if=/dev/zero of="$MNT/filler" bs=4096 status=none 2>/dev/null || true
  if dd if=/dev/zero of="$MNT/probe" bs=4096 count=1 status=none 2>/dev/null; then
    fail "the tmpfs is not full"
  fi
  rm -f "$MNT/probe"
  "$IMGDEDUP" cache gc --max-size 0 --json "$MNT/cache" > "$WORK/gc3.json" 2> "$WORK/gc3.err" ||
    fail "cache gc on a full filesystem: $(cat "$WORK/gc3.err")"
  check "full filesystem: gc removed both images" test "$(json_get "$WORK/gc3.json" images_removed)" = 2
  check "full filesystem: the image files are gone" test ! -e "$MNT/cache/images/b.raw" -a ! -e "$MNT/cache/images/c.raw"
  "$IMGDEDUP" cache ls --json "$MNT/cache" > "$WORK/ls3.json" 2> "$WORK/ls3.err"
  check "full filesystem: the index lists nothing, without a warning" python3 - "$WORK/ls3.json" "$WORK/ls3.err" <<'PY'
import json, os, sys
sys.exit(not (json.load(open(sys.argv[1]))["images"] == [] and os.path.getsize(sys.argv[2]) == 0))
PY
  rm -f "$MNT/filler"
  unmount_full
fi

# ---- 4. a damaged complete image is repaired once -------------------------
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/c4" -q b.raw
# five blocks of it, each the first copy of its content, damaged behind
# imgdedup's back
read -r -a DAMAGED < <(python3 - "$TESTS_DIR" "$REPO/b.raw" <<'PY'
import random, sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
ds, seen, first = blocks(sys.argv[2], 4096), set(), []
for i, d in enumerate(ds):
    if d != ZERO and d not in seen:
        first.append(i)
    seen.add(d)
print(*sorted(random.Random(25).sample(first, 5)))
PY
)
for b in "${DAMAGED[@]}"; do
  printf '¥Z' | dd of="$WORK/c4/images/b.raw" bs=1 seek=$((b * BS + 100)) conv=notrunc status=none
done
echo "damaged blocks ${DAMAGED[*]} of the cached b.raw"
# the first run reads only the first damaged block: that block is fetched
# for the client, and the whole image is checked and repaired behind it
serve_start d1 --from "$NGINX_URL" --cache "$WORK/c4" b.raw
qemu-io -r -f raw -c "read $((DAMAGED[0] * BS)) $BS" "$(serve_uri d1 b.raw)" > "$WORK/d1.qio" ||
  fail "reading the damaged block: $(cat "$WORK/d1.qio")"
for _ in $(seq "$SERVE_WAIT"); do cmp -s "$WORK/c4/images/b.raw" "$REPO/b.raw" && break; sleep 0.1; done
serve_stop d1
check "damaged image: repaired in place" cmp "$WORK/c4/images/b.raw" "$REPO/b.raw"
check "damaged image: the damage was reported" grep -q "warning" "$WORK/d1.err"
check "damaged image: only the damaged blocks were fetched" test "$(serve_stat d1 bytes_fetched)" -le $((5 * BS))
check "damaged image: no partial image left beside it" test ! -e "$WORK/c4/images/b.raw.partial" -a ! -e "$WORK/c4/images/b.raw.present"
serve_start d2 --from "$NGINX_URL" --cache "$WORK/c4" b.raw
nbdcopy --no-extents "$(serve_uri d2 b.raw)" "$WORK/d2.raw"
serve_stop d2
cmp "$WORK/d2.raw" "$REPO/b.raw" || fail "damaged image, next run: read differs"
check "damaged image, next run: nothing fetched" test "$(serve_stat d2 bytes_fetched)" = 0
check "damaged image, next run: no warning" test ! -s "$WORK/d2.err"
"$IMGDEDUP" cache ls --json "$WORK/c4" > "$WORK/ls4.json"
check "damaged image: cache ls lists it, complete, alone" python3 - "$WORK/ls4.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["images"]
sys.exit(not (len(v) == 1 and not v[0]["partial"] and v[0]["path"].endswith("/b.raw")))
PY

# ---- 5. cache ls counts the blocks of the image it says it counts ---------
serve_start r1 --from "$NGINX_URL" --cache "$WORK/c5" rep.raw
nbdcopy --no-extents "$(serve_uri r1 rep.raw)" "$WORK/r1.raw"
serve_stop r1
cmp "$WORK/r1.raw" "$REPO/rep.raw" || fail "rep.raw read differs"
"$IMGDEDUP" cache ls --json "$WORK/c5" > "$WORK/ls5.json"
"$IMGDEDUP" cache ls "$WORK/c5" > "$WORK/ls5.txt"
read -r ZERO_R NEW_R _ NONZERO_R < <(serve_expect "$REPO/rep.raw" $BS)
python3 - "$WORK/ls5.json" $((NONZERO_R / BS)) "$NEW_R" <<'PY' || fail "cache ls --json after a full read: $(cat "$WORK/ls5.json")"
import json, sys
v = json.load(open(sys.argv[1]))["images"]
data, distinct = int(sys.argv[2]), int(sys.argv[3])
assert len(v) == 1 and v[0]["partial"], v
assert v[0]["data_blocks"] == data, (v[0]["data_blocks"], data)
assert v[0]["present_blocks"] == data, (v[0]["present_blocks"], data)
assert v[0]["blocks"] == distinct, (v[0]["blocks"], distinct)
PY
echo "ok: cache ls after a full read: all $((NONZERO_R / BS)) data blocks present ($NEW_R distinct)"
check "cache ls text: 100% of the data blocks present" \
  grep -q "partial: $((NONZERO_R / BS)) of $((NONZERO_R / BS)) data blocks present, 100%" "$WORK/ls5.txt"

echo "PASS test_cache"
