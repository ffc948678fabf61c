#!/usr/bin/env bash
# deploy end to end, against a real nginx on 127.0.0.1 and a fault-injecting
# python server: byte-exact outputs, bytes_fetched equal to an independent
# count of the distinct missing blocks, cache damage, source damage, retries,
# kill -9 and resume, paths escaping the source, cache ls/gc, seeds.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
cleanup_fns+=(nginx_stop stop_faultserver)

BS=4096
REPO=$WORK/repo
mkdir -p "$REPO/sub" "$WORK/t1" "$WORK/t2"

# Two related ext4 images (shared files, plus each its own) and a raw image
# with repeated blocks, a partial last block and holes.
cp -r /usr/share/common-licenses "$WORK/t1/lic"
cp -r /usr/share/common-licenses "$WORK/t2/lic"
cp -r /usr/share/zoneinfo/Europe "$WORK/t1/eu" 2>/dev/null || cp -r /etc "$WORK/t1/eu" 2>/dev/null || true
head -c 3000000 /dev/urandom > "$WORK/t2/own.bin"
mkext4 "$REPO/v1.raw" 24 "$WORK/t1"
mkext4 "$REPO/sub/v2.raw" 24 "$WORK/t2"
python3 - "$REPO/rep.raw" <<'PY'
import random, sys
r = random.Random(7)
blocks = [r.randbytes(4096) for _ in range(40)]
out = bytearray()
for i in range(300):
    out += bytes(4096) if i % 7 == 0 else blocks[i % 40]
out += b"tail" * 100          # a partial last block
open(sys.argv[1], "wb").write(out)
PY
# a larger image for the kill -9 test: 40 MiB of random data
python3 -c 'import random,sys; r=random.Random(3); open(sys.argv[1],"wb").write(r.randbytes(40<<20))' "$REPO/big.raw"

"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"


nginx_start "$REPO"
URL=$NGINX_URL

# 1. empty cache: every distinct non-zero block fetched once, output exact
C1=$WORK/cache1
"$IMGDEDUP" deploy --from "$URL" --cache "$C1" --json -q v1.raw > "$WORK/d1.json"
check "v1 byte-exact" cmp "$REPO/v1.raw" "$C1/images/v1.raw"
want=$(missing_bytes "$REPO/v1.raw")
got=$(json_get "$WORK/d1.json" bytes_fetched)
check "v1 bytes_fetched ($got) = distinct non-zero blocks ($want)" [ "$got" = "$want" ]
check "v1 bytes_total" [ "$(json_get "$WORK/d1.json" bytes_total)" = "$(stat -c %s "$REPO/v1.raw")" ]
python3 - "$WORK/d1.json" <<'PY' || fail "json keys"
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("bytes_total", "bytes_zero", "bytes_from_cache", "bytes_fetched", "requests"):
    assert isinstance(j[k], int), k
assert j["requests"] > 2
PY
echo "ok: json keys"
check "OUT is sparse (holes for zero blocks)" [ "$(du -B1 "$C1/images/v1.raw" | cut -f1)" -lt "$(stat -c %s "$REPO/v1.raw")" ]

# 2. v2 with v1 cached: only what v1 lacks
"$IMGDEDUP" deploy --from "$URL" --cache "$C1" -o "$WORK/v2.out" --json -q sub/v2.raw > "$WORK/d2.json"
check "v2 byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.out"
want2=$(missing_bytes "$REPO/sub/v2.raw" "$REPO/v1.raw")
got2=$(json_get "$WORK/d2.json" bytes_fetched)
check "v2 bytes_fetched ($got2) = blocks missing from the cache ($want2)" [ "$got2" = "$want2" ]
check "v2 used the cache" [ "$(json_get "$WORK/d2.json" bytes_from_cache)" -gt 0 ]

# repeated blocks and a partial tail
"$IMGDEDUP" deploy --from "$URL" --cache "$C1" --json -q rep.raw > "$WORK/d3.json"
check "rep byte-exact" cmp "$REPO/rep.raw" "$C1/images/rep.raw"
check "rep: each distinct block fetched once" [ "$(json_get "$WORK/d3.json" bytes_fetched)" = "$(missing_bytes "$REPO/rep.raw" "$REPO/v1.raw" "$REPO/sub/v2.raw")" ]

# 3. an existing OUT is kept unless --force
before=$(sha256sum "$WORK/v2.out")
echo junk > "$WORK/exists.out"
if "$IMGDEDUP" deploy --from "$URL" --cache "$C1" -o "$WORK/exists.out" -q sub/v2.raw 2> "$WORK/e.err"; then fail "existing OUT replaced without --force"; fi
check "existing OUT untouched" grep -qx junk "$WORK/exists.out"
check "existing OUT message" grep -q "force" "$WORK/e.err"
"$IMGDEDUP" deploy --from "$URL" --cache "$C1" -o "$WORK/exists.out" --force -q sub/v2.raw
check "--force replaces" cmp "$REPO/sub/v2.raw" "$WORK/exists.out"

# 4. seeds: a local raw image as a further source, with an empty cache
"$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache-seed" --seed "$REPO/v1.raw" -o "$WORK/v2.seed" --json -q sub/v2.raw > "$WORK/ds.json"
check "seeded v2 byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.seed"
check "seeded v2 fetched only what the seed lacks" [ "$(json_get "$WORK/ds.json" bytes_fetched)" = "$want2" ]

# 4b. a seed that is a repository image is known through its map, not hashed;
# the same bytes under a name the index does not know are hashed
check "seed found by name used its map" [ "$(json_get "$WORK/ds.json" seeds_mapped)" = 1 ]
cp --sparse=always "$REPO/v1.raw" "$WORK/stranger.raw"
"$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache-seed2" --seed "$WORK/stranger.raw" -o "$WORK/v2.seed2" --json -q sub/v2.raw > "$WORK/ds2.json"
check "hashed seed: byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.seed2"
check "hashed seed: not mapped" [ "$(json_get "$WORK/ds2.json" seeds_mapped)" = 0 ]
check "hashed seed: same fetch as mapped" [ "$(json_get "$WORK/ds2.json" bytes_fetched)" = "$want2" ]
# a local source: the repository's own file, same identity, map trusted
"$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/cache-seed3" --seed "$REPO/v1.raw" -o "$WORK/v2.seed3" --json -q sub/v2.raw > "$WORK/ds3.json"
check "local seed via map: byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.seed3"
check "local seed via map: mapped" [ "$(json_get "$WORK/ds3.json" seeds_mapped)" = 1 ]
check "local seed via map: fetched only what it lacks" [ "$(json_get "$WORK/ds3.json" bytes_fetched)" = "$want2" ]

# 4c. fully cached: every block from the cache (verified on 2 threads), only
# the image's entry and its map requested; a tampered block is still caught
CF=$WORK/cache-full
"$IMGDEDUP" deploy --from "$URL" --cache "$CF" -q sub/v2.raw
"$IMGDEDUP" deploy --from "$URL" --cache "$CF" -o "$WORK/v2.full" --jobs 2 --json -q sub/v2.raw > "$WORK/df.json"
check "fully cached: byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.full"
check "fully cached: nothing fetched" [ "$(json_get "$WORK/df.json" bytes_fetched)" = 0 ]
check "fully cached: 2 requests (entry, map)" [ "$(json_get "$WORK/df.json" requests)" = 2 ]
check "fully cached: all data from the cache" [ "$(( $(json_get "$WORK/df.json" bytes_zero) + $(json_get "$WORK/df.json" bytes_from_cache) ))" = "$(stat -c %s "$REPO/sub/v2.raw")" ]
doff=$(python3 - "$CF/images/sub%2Fv2.raw" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
nz = [o for o in range(0, len(d), 4096) if d[o:o+4096].count(0) != 4096]
print(nz[len(nz) // 2] + 10)
PY
)
printf '\x5a' | dd of="$CF/images/sub%2Fv2.raw" bs=1 seek="$doff" conv=notrunc status=none
"$IMGDEDUP" deploy --from "$URL" --cache "$CF" -o "$WORK/v2.full2" --jobs 2 --json -q sub/v2.raw > "$WORK/df2.json" 2> "$WORK/df2.err"
check "fully cached, tampered: byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.full2"
check "fully cached, tampered: caught" [ "$(json_get "$WORK/df2.json" cache_damaged)" -ge 1 ]
check "fully cached, tampered: a warning" grep -q "does not match the cache index" "$WORK/df2.err"
check "fully cached, tampered: refetched" [ "$(json_get "$WORK/df2.json" bytes_fetched)" -gt 0 ]

# 5. a tampered cache costs a refetch, never a wrong byte
CT=$WORK/cache-t
"$IMGDEDUP" deploy --from "$URL" --cache "$CT" -q v1.raw
off=$(python3 - "$REPO/sub/v2.raw" "$CT/images/v1.raw" <<'PY'
import hashlib, sys
def digests(p):
    d = open(p, "rb").read()
    return [hashlib.sha256(d[o:o+4096].ljust(4096, b"\0")).digest() if d[o:o+4096].count(0) != len(d[o:o+4096]) else None
            for o in range(0, len(d), 4096)]
v2 = set(x for x in digests(sys.argv[1]) if x)
first = {}
for i, x in enumerate(digests(sys.argv[2])):
    if x and x not in first:
        first[x] = i
print(min(first[x] for x in v2 if x in first) * 4096 + 100)
PY
)
printf '\xff' | dd of="$CT/images/v1.raw" bs=1 seek="$off" conv=notrunc status=none
"$IMGDEDUP" deploy --from "$URL" --cache "$CT" -o "$WORK/v2.t" --json -q sub/v2.raw > "$WORK/dt.json" 2> "$WORK/dt.err"
check "tampered cache: output still exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.t"
check "tampered cache: a warning" grep -q "warning: cache" "$WORK/dt.err"
check "tampered cache: refetched more" [ "$(json_get "$WORK/dt.json" bytes_fetched)" -gt "$want2" ]
# a damaged cache index: a warning, rebuilt from the images present, so only
# what v1 lacks is fetched; gc still works on the rebuilt index
CI=$WORK/cache-i
"$IMGDEDUP" deploy --from "$URL" --cache "$CI" -q v1.raw
printf 'garbage' | dd of="$CI/index" bs=1 seek=40 conv=notrunc status=none
"$IMGDEDUP" deploy --from "$URL" --cache "$CI" -o "$WORK/v2.i" --json -q sub/v2.raw > "$WORK/di.json" 2> "$WORK/di.err"
check "damaged cache index: output exact" cmp "$REPO/sub/v2.raw" "$WORK/v2.i"
check "damaged cache index: a warning" grep -q "warning" "$WORK/di.err"
check "damaged cache index: rebuilt, only what v1 lacks fetched" [ "$(json_get "$WORK/di.json" bytes_fetched)" = "$want2" ]
"$IMGDEDUP" cache ls "$CI" > "$WORK/ci.ls"
check "cache rebuilt with the new image" grep -q "v2.i" "$WORK/ci.ls"
truncate -s 10 "$CI/index"
"$IMGDEDUP" cache gc --max-size 0 "$CI" > "$WORK/gi.out" 2> "$WORK/gi.err"
check "damaged cache index: gc removes the adopted images" [ ! -e "$CI/images/v1.raw" ]

# 6. a corrupted source block: the deploy fails naming image, offset and source; no OUT
BAD=$WORK/badrepo
cp -a "$REPO" "$BAD"
boff=$(python3 - "$BAD/v1.raw" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
for o in range(0, len(d), 4096):
    if d[o:o+4096].count(0) != 4096:
        print(o); break
PY
)
printf '\x5a' | dd of="$BAD/v1.raw" bs=1 seek=$((boff + 17)) conv=notrunc status=none
nginx_stop
nginx_start "$BAD"
if "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/cache-bad" -o "$WORK/bad.out" -q v1.raw 2> "$WORK/bad.err"; then fail "corrupt source accepted"; fi
cat "$WORK/bad.err"
check "corrupt source: names the image" grep -q "v1.raw" "$WORK/bad.err"
check "corrupt source: names the offset" grep -q "offset $boff" "$WORK/bad.err"
check "corrupt source: names the source" grep -q "$NGINX_URL" "$WORK/bad.err"
check "corrupt source: no OUT" [ ! -e "$WORK/bad.out" ]
check "corrupt source: no OUT.part" [ ! -e "$WORK/bad.out.part" ]
nginx_stop
nginx_start "$REPO"
URL=$NGINX_URL

# 7. 500s and dropped connections: retries, still exact
FS_PID=
stop_faultserver() { [ -n "${FS_PID:-}" ] && kill "$FS_PID" 2>/dev/null; FS_PID=; true; }
start_faultserver() { # ARGS...
  rm -f "$WORK/fs.port"
  python3 "$TESTS_DIR/faultserver.py" --root "$REPO" --port-file "$WORK/fs.port" "$@" &
  FS_PID=$!
  local i; for i in $(seq 100); do [ -s "$WORK/fs.port" ] && break; sleep 0.05; done
  FS_URL=http://127.0.0.1:$(cat "$WORK/fs.port")
}
start_faultserver --fail500 3 --drop 3 --log "$WORK/fs.log"
"$IMGDEDUP" deploy --from "$FS_URL" --cache "$WORK/cache-f" --connections 2 --json -q v1.raw > "$WORK/df.json" 2> "$WORK/df.err"
check "faults: output exact" cmp "$REPO/v1.raw" "$WORK/cache-f/images/v1.raw"
check "faults: retried" [ "$(json_get "$WORK/df.json" retries)" -ge 6 ]
check "faults: 500s were served" [ "$(grep -c '^500' "$WORK/fs.log")" = 3 ]
check "faults: connections were dropped" [ "$(grep -c 'DROP' "$WORK/fs.log")" = 3 ]
check "faults: bytes_fetched still the distinct blocks" [ "$(json_get "$WORK/df.json" bytes_fetched)" = "$want" ]
stop_faultserver

# 8. a 4xx is a clear error; a redirect to another scheme is refused
mv "$REPO/rep.raw" "$WORK/rep.away"
if "$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache-404" -q rep.raw 2> "$WORK/404.err"; then fail "404 accepted"; fi
check "404 named" grep -q "HTTP 404" "$WORK/404.err"
mv "$WORK/rep.away" "$REPO/rep.raw"
start_faultserver --redirect "file:///etc/passwd"
if "$IMGDEDUP" deploy --from "$FS_URL" --cache "$WORK/cache-r" -q v1.raw 2> "$WORK/r.err"; then fail "redirect to file:// followed"; fi
cat "$WORK/r.err"
check "redirect to file:// refused" grep -qi "redirect\|protocol" "$WORK/r.err"
stop_faultserver

# 9. kill -9 during a deploy, then resume: what was written is reused
start_faultserver --delay 0.15
"$IMGDEDUP" deploy --from "$FS_URL" --cache "$WORK/cache-k" -o "$WORK/big.out" --connections 1 -q big.raw &
dpid=$!
for i in $(seq 200); do
  [ -f "$WORK/big.out.part" ] && [ "$(du -B1 "$WORK/big.out.part" | cut -f1)" -ge $((8 << 20)) ] && break
  sleep 0.05
done
kill -9 $dpid; wait $dpid 2>/dev/null || true
check "killed: no OUT" [ ! -e "$WORK/big.out" ]
check "killed: OUT.part left" [ -e "$WORK/big.out.part" ]
stop_faultserver
"$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache-k" -o "$WORK/big.out" --json -q big.raw > "$WORK/dk.json"
check "resumed: output exact" cmp "$REPO/big.raw" "$WORK/big.out"
check "resumed: reused what was written" [ "$(json_get "$WORK/dk.json" bytes_resumed)" -ge $((8 << 20)) ]
check "resumed: fetched only the rest" [ "$(json_get "$WORK/dk.json" bytes_fetched)" -le $(((40 << 20) - (8 << 20))) ]
check "resumed: no OUT.part left" [ ! -e "$WORK/big.out.part" ]

# 10. ids escaping the source root are refused
for bad in ../etc/passwd /etc/passwd sub/../../x; do
  if "$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache-x" -o "$WORK/x.out" -q "$bad" 2> "$WORK/x.err"; then fail "id $bad accepted"; fi
  check "id '$bad' refused" grep -q "refused" "$WORK/x.err"
done
# a symlink out of a local source
LR=$WORK/linkrepo
cp -a "$REPO" "$LR"
cp "$LR/v1.raw" "$WORK/outside.raw"
rm "$LR/v1.raw"; ln -s "$WORK/outside.raw" "$LR/v1.raw"
if "$IMGDEDUP" deploy --from "$LR" --cache "$WORK/cache-l" -o "$WORK/l.out" -q v1.raw 2> "$WORK/l.err"; then fail "symlink out of the source followed"; fi
check "symlink out refused" grep -q "outside the source" "$WORK/l.err"
# a local source works too
"$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/cache-loc" -q sub/v2.raw
check "local source byte-exact" cmp "$REPO/sub/v2.raw" "$WORK/cache-loc/images/sub%2Fv2.raw"

# 11. cache ls / gc (C1 holds v1, v2.out, rep, exists.out: the last used last)
"$IMGDEDUP" cache ls --json "$C1" > "$WORK/ls.json"
check "cache ls lists 4 images" [ "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["images"]))' "$WORK/ls.json")" = 4 ]
sz=$(du -B1 "$WORK/exists.out" | cut -f1)
"$IMGDEDUP" cache gc --max-size "$sz" --json "$C1" > "$WORK/gc.json"
check "gc removed 3 images" [ "$(json_get "$WORK/gc.json" images_removed)" = 3 ]
check "gc deleted owned v1" [ ! -e "$C1/images/v1.raw" ]
check "gc deleted owned rep" [ ! -e "$C1/images/rep.raw" ]
check "gc left images registered from outside in place" [ -e "$WORK/v2.out" ]
"$IMGDEDUP" cache ls --json "$C1" > "$WORK/ls2.json"
check "index consistent after gc" [ "$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["images"]; print(len(j), j[0]["path"].endswith("exists.out"))' "$WORK/ls2.json")" = "1 True" ]
"$IMGDEDUP" deploy --from "$URL" --cache "$C1" --json -q v1.raw > "$WORK/d5.json"
check "after gc: exact" cmp "$REPO/v1.raw" "$C1/images/v1.raw"
check "after gc: fetched what gc dropped" [ "$(json_get "$WORK/d5.json" bytes_fetched)" = "$(missing_bytes "$REPO/v1.raw" "$REPO/sub/v2.raw")" ]
echo "all deploy tests passed"
