#!/usr/bin/env bash
# imgdedup pack: the pack read back independently (python3 hashlib over dd
# slices of the images, frames cut with dd and decoded with the zstd CLI);
# incremental runs (nothing written when unchanged, only a new image's
# blocks added and only its map opened (strace), dropped blocks read back
# from the pack's copy of the removed image's list), verify and verify
# --deep finding damage,
# info, the lock, kill -9 at random moments, and the pack source fetching
# an image's missing blocks from nginx.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
command -v zstd >/dev/null || fail "the zstd command-line tool is needed (scripts/install-deps)"
R=$WORK/repo; mkdir -p "$R/dir"
python3 - "$R" <<'PY'
import random, sys
r = random.Random(5); bs = 4096; d = sys.argv[1]
words = b"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu ".split()
text = lambda: b" ".join(r.choice(words) for _ in range(900))[:bs].ljust(bs, b".")
rnd = lambda: bytes(r.getrandbits(8) for _ in range(bs))
base = [text() if i % 3 else rnd() for i in range(300)]
with open(d + "/a.raw", "wb") as f: f.write(b"".join(base))
b = [bytes(bs)] * 20 + base[:150] + [text() for _ in range(60)] + [base[5]] * 10
with open(d + "/dir/b.raw", "wb") as f: f.write(b"".join(b) + b"tail bytes")
PY
src=$WORK/tree; mkdir -p "$src"; for p in $(ls /usr/share/doc | head -n 80); do cp -a "/usr/share/doc/$p" "$src/" 2>/dev/null || true; done
mkext4 "$R/fs.img" 24 "$src"
qemu-img convert -f raw -O qcow2 "$R/a.raw" "$R/a.qcow2"
I=$R/.imgdedup
ids() { echo "a.raw=$R/a.raw" "a.qcow2=$R/a.raw" "dir/b.raw=$R/dir/b.raw" "fs.img=$R/fs.img" "$@"; }
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map -q "$R"
"$IMGDEDUP" pack --json "$R" > "$WORK/p1.json"
for k in blocks pack_bytes raw_bytes added removed; do
  json_get "$WORK/p1.json" $k >/dev/null || fail "pack --json lacks $k"
done
want=$(python3 "$TESTS_DIR/blockhash.py" --summary 4096 "$R/a.raw" "$R/dir/b.raw" "$R/fs.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_blocks"])')
check "blocks = distinct non-zero blocks of the images ($want)" test "$(json_get "$WORK/p1.json" blocks)" = "$want"
check "added = blocks on the first run" test "$(json_get "$WORK/p1.json" added)" = "$want"
check "raw_bytes = blocks x 4096" test "$(json_get "$WORK/p1.json" raw_bytes)" = $((want * 4096))
ref=$(python3 "$TESTS_DIR/packref.py" "$I" 4096 $(ids)) || fail "the pack does not read back as the images' blocks"
echo "ok: pack read back independently: $ref"
# the kept block lists are hard links to blocks/ while scan keeps those: no space of the pack's
ondisk=$(find "$I/pack" -type f ! \( -path "$I/pack/lists/*" -links +1 \) -printf '%s\n' | awk '{s += $1} END {print s}')
check "pack_bytes is the pack's size on disk" test "$(json_get "$WORK/p1.json" pack_bytes)" = "$ondisk"
check "the pack is smaller than its blocks" test "$ondisk" -lt $((want * 4096))
"$IMGDEDUP" verify -q "$R" || fail "verify after pack"
"$IMGDEDUP" verify -q --deep "$R" || fail "verify --deep after pack"
echo "ok: verify and verify --deep pass"
"$IMGDEDUP" info "$R" dir/b.raw | grep -q '^pack: .* distinct blocks, in [0-9]* frames' || fail "info shows no pack line"
"$IMGDEDUP" info --json "$R" dir/b.raw > "$WORK/info.json"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["pack"]; assert p["current"] and p["blocks"] > 0 and p["frame_bytes"] > 0' "$WORK/info.json" \
  || fail "info --json pack"
echo "ok: info shows the image in the pack"

# unchanged index: nothing written at all
snap() { find "$I/pack" -type f -printf '%p %i %T@ %s\n' | sort; }
snap > "$WORK/before"
"$IMGDEDUP" pack --json "$R" > "$WORK/p2.json"
snap > "$WORK/after"
check "re-run writes nothing" diff "$WORK/before" "$WORK/after"
check "re-run adds nothing" test "$(json_get "$WORK/p2.json" added)" = 0 -a "$(json_get "$WORK/p2.json" changed)" = False

# a new image: only its new blocks, in a new data file; the old one untouched
python3 - "$R" <<'PY'
import random, sys
r = random.Random(9); bs = 4096; d = sys.argv[1]
a = open(d + "/a.raw", "rb").read()
words = b"one two three four five six seven eight nine ten eleven twelve ".split()
new = [(b"%d " % i) + b" ".join(r.choice(words) for _ in range(900))[:bs] for i in range(37)]
new = [n[:bs].ljust(bs, b"-") for n in new]
with open(d + "/c.raw", "wb") as f: f.write(a[:100 * bs] + b"".join(new))
PY
old_data=$(ls "$I"/pack/data/*.zpk); old_stat=$(stat -c '%i %Y %s' "$old_data")
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
# the cost follows the change: of the index's maps and lists only c.raw's map is opened
# (once for its new blocks, once for its view), and no other view is written
# (LeakSanitizer cannot run under ptrace: the ASan build's leak check is off for these two)
nolsan=ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
env "$nolsan" strace -f -qq -e trace=openat -o "$WORK/p3.strace" "$IMGDEDUP" pack --json "$R" > "$WORK/p3.json"
cmap=$(printf %s c.raw | sha256sum | cut -d' ' -f1).map
opened=$(grep -v ENOENT "$WORK/p3.strace" | grep -oE '"[^"]*/\.imgdedup/(maps|blocks|pack/lists|pack/views)/[^"]+"' | sort -u | tr -d '"')
check "pack after one image added opens only that image's map (and writes its view)" \
  test "$(echo "$opened" | grep -v '/pack/views/.*\.tmp\.' | sed 's|.*/\.imgdedup/||')" = "maps/$cmap"
check "pack --json: maps_read 2 (one map, twice), lists_read 0" \
  test "$(json_get "$WORK/p3.json" maps_read)" = 2 -a "$(json_get "$WORK/p3.json" lists_read)" = 0
check "only the new image's 37 new blocks are added" test "$(json_get "$WORK/p3.json" added)" = 37
check "blocks grow by 37" test "$(json_get "$WORK/p3.json" blocks)" = $((want + 37))
check "one new data file, the old one untouched" \
  test "$(ls "$I"/pack/data/*.zpk | wc -l)" = 2 -a "$(stat -c '%i %Y %s' "$old_data")" = "$old_stat"
check "one view written" test "$(json_get "$WORK/p3.json" views_written)" = 1
python3 "$TESTS_DIR/packref.py" "$I" 4096 $(ids "c.raw=$R/c.raw") >/dev/null || fail "pack after adding an image"

# the pack source over nginx: a node holding a.raw fetches c.raw's missing blocks
lib=$(dirname "$IMGDEDUP")/libimgdedup.a
san=; [ "$(nm "$lib" 2>/dev/null | grep -c __asan_)" != 0 ] && san="-fsanitize=address,undefined"   # the ASan build
cc -O1 -std=c11 -D_GNU_SOURCE $san -I"$TESTS_DIR/../../lib" "$TESTS_DIR/pack_fetch.c" "$lib" \
  $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$WORK/pack_fetch" \
  || fail "cannot build pack_fetch"
nginx_start "$R"; cleanup_fns+=(nginx_stop)
nginx_log_reset
"$WORK/pack_fetch" "$NGINX_URL" c.raw "$I" a.raw pack > "$WORK/f1.json" || fail "pack source over HTTP"
check "37 missing blocks delivered verified from the pack" \
  test "$(json_get "$WORK/f1.json" missing)" = 37 -a "$(json_get "$WORK/f1.json" delivered)" = 37
frames=$(json_get "$WORK/f1.json" payload_bytes); view=$(json_get "$WORK/f1.json" view_bytes)
catmap=$(( $(stat -c %s "$I/catalog") + $(stat -c %s "$I/maps/$(printf %s c.raw | sha256sum | cut -d' ' -f1).map") ))
check "nginx sent catalog + map + view + frames, nothing else" test "$(nginx_bytes)" = $((catmap + view + frames))
check "one data file, few range requests" test "$(json_get "$WORK/f1.json" block_requests)" -le 2
nginx_log_reset
"$WORK/pack_fetch" "$NGINX_URL" c.raw "$I" a.raw raw > "$WORK/f2.json" || fail "raw fetch over HTTP"
check "the pack sends fewer block bytes than the raw image ranges" test "$frames" -lt "$(json_get "$WORK/f2.json" payload_bytes)"
# deploy and serve use the pack: the same frames, nothing else; --no-pack reads the image
for n in node node2 node3; do "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/$n" -q a.raw; done
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/node" -o "$WORK/c.out" --json -q c.raw > "$WORK/d1.json"
check "deploy through the pack: byte-exact" cmp "$R/c.raw" "$WORK/c.out"
check "deploy through the pack: bytes_fetched = the frames" test "$(json_get "$WORK/d1.json" bytes_fetched)" = "$frames"
# a node reads the image's own entry, never the catalog
entmap=$(( $(stat -c %s "$I/entries/$(printf %s c.raw | sha256sum | cut -d' ' -f1)") + catmap - $(stat -c %s "$I/catalog") ))
check "deploy through the pack: nginx sent entry + map + view + frames" test "$(nginx_bytes)" = $((entmap + view + frames))
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/node2" -o "$WORK/c.out2" --no-pack --json -q c.raw > "$WORK/d2.json"
check "deploy --no-pack: byte-exact" cmp "$R/c.raw" "$WORK/c.out2"
check "deploy --no-pack: the image's ranges" test "$(json_get "$WORK/d2.json" bytes_fetched)" = "$(json_get "$WORK/f2.json" payload_bytes)"
source "$TESTS_DIR/serve.sh"
serve_start sp --from "$NGINX_URL" --cache "$WORK/node3" c.raw
nbdcopy "$(serve_uri sp c.raw)" "$WORK/c.served"
serve_stop sp
check "serve through the pack: byte-exact" cmp "$R/c.raw" "$WORK/c.served"
check "serve through the pack: at most the frames" test "$(serve_stat sp bytes_fetched)" -le "$frames"
# a stale pack (the image changed, pack not re-run) is not used
head -c 4096 /dev/urandom | dd of="$R/c.raw" bs=4096 seek=120 conv=notrunc 2>/dev/null
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
if "$WORK/pack_fetch" "$NGINX_URL" c.raw "$I" a.raw pack 2> "$WORK/f3.err"; then fail "a stale pack was used"; fi
grep -q "no pack for this image" "$WORK/f3.err" || fail "stale pack: $(cat "$WORK/f3.err")"
echo "ok: a pack older than the image is not used (no view for its block list)"
nginx_stop

# a removed image: its blocks are dropped
"$IMGDEDUP" pack --json "$R" > "$WORK/p3b.json"
check "the changed block replaced" test "$(json_get "$WORK/p3b.json" added)" = 1 -a "$(json_get "$WORK/p3b.json" removed)" = 1
rm "$R/c.raw"; "$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
env "$nolsan" strace -f -qq -e trace=openat -o "$WORK/p4.strace" "$IMGDEDUP" pack --json "$R" > "$WORK/p4.json"
check "the removed image's 37 blocks are dropped" test "$(json_get "$WORK/p4.json" removed)" = 37
check "pack after one image removed reads one list (the pack's copy of it) and no map" \
  test "$(json_get "$WORK/p4.json" lists_read)" = 1 -a "$(json_get "$WORK/p4.json" maps_read)" = 0 \
  -a "$(grep -v ENOENT "$WORK/p4.strace" | grep -cE '/\.imgdedup/(maps|blocks)/')" = 0
check "back to the first run's blocks" test "$(json_get "$WORK/p4.json" blocks)" = "$want"
python3 "$TESTS_DIR/packref.py" "$I" 4096 $(ids) >/dev/null || fail "pack after removing an image"

# damage: a byte inside a frame (verify --deep), a truncated data file (verify)
data=$(ls -S "$I"/pack/data/*.zpk | head -1)
off=$(( $(stat -c %s "$data") / 2 ))
flip() { python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^255]))' "$1" "$2"; }
flip "$data" $off
"$IMGDEDUP" verify -q "$R" || fail "verify (not deep) reads no frame"
if "$IMGDEDUP" verify -q --deep "$R" 2> "$WORK/v.err"; then fail "verify --deep missed a damaged frame"; fi
grep -q "$(basename "$data")" "$WORK/v.err" || fail "verify --deep does not name the data file: $(cat "$WORK/v.err")"
flip "$data" $off
"$IMGDEDUP" verify -q --deep "$R" || fail "verify --deep after repair"
truncate -s -1 "$data"
if "$IMGDEDUP" verify -q "$R" 2> "$WORK/v2.err"; then fail "verify missed a truncated data file"; fi
"$IMGDEDUP" pack -q "$R" 2>/dev/null || fail "pack after damage"
"$IMGDEDUP" verify -q --deep "$R" || fail "pack did not repair a truncated data file"
echo "ok: damage found by verify, repaired by the next pack"

# the lock
flock "$I/lock" sleep 3 & lpid=$!
sleep 0.5
if "$IMGDEDUP" pack --no-wait -q "$R" 2> "$WORK/lock.err"; then fail "pack ran while the index was locked"; fi
grep -q "locked" "$WORK/lock.err" || fail "lock message: $(cat "$WORK/lock.err")"
wait $lpid
echo "ok: a locked index is refused with --no-wait"

# kill -9 at random moments: the previous pack stays usable, the next run completes
K=$WORK/krepo; mkdir -p "$K"
python3 - "$K" <<'PY'
import random, sys
r = random.Random(11); bs = 4096; d = sys.argv[1]
words = [bytes(r.getrandbits(8) for _ in range(r.randint(3, 9))) for _ in range(300)]
def blk(): return b" ".join(r.choice(words) for _ in range(700))[:bs].ljust(bs, b"\0")
pool = [blk() for _ in range(6000)]
for i in range(4):
    with open(f"{d}/k{i}.raw", "wb") as f:
        f.write(b"".join(pool[j] for j in range(i * 1200, i * 1200 + 2400)))
PY
"$IMGDEDUP" scan -q "$K"; "$IMGDEDUP" map -q "$K"
hits=0
for round in $(seq 1 10); do
  if [ $((round % 3)) = 0 ]; then rm -rf "$K/.imgdedup/pack"; fi
  if [ $((round % 2)) = 0 ]; then   # the repository changes between rounds: an image comes or goes
    if [ -e "$K/extra.raw" ]; then rm "$K/extra.raw"
    else { head -c $((1000 * 4096)) "$K/k1.raw"; head -c $((500 * 4096)) /dev/urandom; } > "$K/extra.raw"; fi
    "$IMGDEDUP" scan -q "$K"; "$IMGDEDUP" map -q "$K"
  fi
  "$IMGDEDUP" pack -q "$K" & pid=$!
  sleep "0.$(( RANDOM % 5 ))$(( RANDOM % 10 ))"
  if kill -9 $pid 2>/dev/null; then hits=$((hits + 1)); fi
  wait $pid 2>/dev/null || true
  if [ -e "$K/.imgdedup/pack/index" ]; then
    "$IMGDEDUP" verify -q --deep "$K" || fail "round $round: pack damaged after kill -9"
  fi
  "$IMGDEDUP" pack -q "$K" || fail "round $round: pack after kill"
  "$IMGDEDUP" verify -q --deep "$K" || fail "round $round: verify after pack"
  left=$(find "$K/.imgdedup/pack" -name '*.tmp.*' | wc -l)
  [ "$left" = 0 ] || fail "round $round: temporary files left"
done
set -- "$K"/*.raw
ids_k=(); for f in "$@"; do ids_k+=("$(basename "$f")=$f"); done
python3 "$TESTS_DIR/packref.py" "$K/.imgdedup" 4096 "${ids_k[@]}" >/dev/null || fail "pack after the kill rounds"
echo "ok: 10 kill rounds ($hits hit a running pack): the pack always usable, then complete"
