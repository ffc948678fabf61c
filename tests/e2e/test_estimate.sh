#!/usr/bin/env bash
# cache estimate against a real nginx: per image, bytes_missing equals the
# bytes_fetched that a real deploy into the same cache then reports, exactly:
#  - without a pack and with one, with an empty cache (no cache directory at
#    all, which estimate does not create) and with a sibling cached;
#  - an image larger than one fetch window (the pack's frames are priced in
#    the windows deploy fetches in);
#  - a raw disk inside a .tar.gz (a streamed member): the whole archive
#    without a pack; with a pack, only the pack's frames (deploy no longer
#    transfers the archive when the pack serves every block);
# during every estimate nginx sees only index requests (entries, maps, pack
# views, boot profiles), never a request for an image or for the pack's
# data; seconds is bytes_missing / --bandwidth, null without it;
# boot_bytes_missing is null while no boot profile is published, then, once
# a.raw's is: for a.raw the bytes of its profile's blocks the cache lacks,
# for an image never booted those of a.raw's profile that it holds and the
# cache lacks (null for none), for the .tar.gz member the whole archive.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
cleanup_fns+=(nginx_stop)

R=$WORK/repo
T=$WORK/t
mkdir -p "$R" "$T/a" "$T/b" "$T/big" "$T/tgz"
# a family: b is a with more files; big holds more than a 16 MiB fetch window
cp -r /usr/share/common-licenses "$T/a/lic"
cp -r /usr/share/common-licenses "$T/b/lic"
cp -r /usr/share/perl5 "$T/b/perl" 2>/dev/null || cp -r /usr/share/zoneinfo "$T/b/zi"
python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(18 << 20))' "$T/big/rnd.bin"
cp -r /usr/share/common-licenses "$T/big/lic"
mkext4 "$R/a.raw" 8 "$T/a"
mkext4 "$R/b.raw" 24 "$T/b"
mkext4 "$R/big.raw" 24 "$T/big"
mkext4 "$T/tgz/disk.img" 8 "$T/b"
(cd "$T/tgz" && tar czf "$R/app.tar.gz" ./disk.img)
age_files "$R"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map -q "$R"
nginx_start "$R"
URL=$NGINX_URL
IMAGES=(a.raw b.raw big.raw app.tar.gz/disk.img)

# estimate CACHE OUT [ARGS...]: JSON of the estimate of every image; checks
# that nginx saw only index requests meanwhile
estimate() {
  local cache=$1 out=$2
  shift 2
  nginx_log_reset
  "$IMGDEDUP" cache estimate --cache "$cache" --from "$URL" --json "$@" "${IMAGES[@]}" > "$out"
  if grep -v '^GET /\.imgdedup/\(entries/\|maps/\|pack/views/\|profiles/\)' "$NGINX_LOG" | grep -q .; then
    fail "estimate made requests other than index requests: $(grep -v '^GET /\.imgdedup/\(entries/\|maps/\|pack/views/\|profiles/\)' "$NGINX_LOG" | head -n 3)"
  fi
}
# missing JSON ID -> bytes_missing of image ID
missing() {
  python3 - "$1" "$2" <<'PY'
import json, sys
for e in json.load(open(sys.argv[1]))["images"]:
    if e["image"] == sys.argv[2]:
        print(e["bytes_missing"])
PY
}
# deploy_fetched CACHE ID -> bytes_fetched of a real deploy of ID into CACHE
deploy_fetched() {
  "$IMGDEDUP" deploy --from "$URL" --cache "$1" --json "$2" > "$WORK/deploy.json"
  json_get "$WORK/deploy.json" bytes_fetched
}
# agree CACHE ID WHAT: estimate, then a deploy of ID: the same bytes
agree() {
  estimate "$1" "$WORK/est.json"
  local e d
  e=$(missing "$WORK/est.json" "$2")
  d=$(deploy_fetched "$1" "$2")
  [ "$e" = "$d" ] || fail "$3: estimate says $e bytes missing, the deploy fetched $d"
  [ "$d" -gt 0 ] || fail "$3: the deploy fetched nothing (nothing was estimated)"
  echo "ok: $3: estimate = deploy's bytes_fetched ($d)"
}

# --- without a pack ---
C1=$WORK/node1
estimate "$C1" "$WORK/e0.json" --bandwidth 1M/s
[ ! -e "$C1" ] || fail "estimate created the cache directory"
check "estimate leaves a missing cache directory alone" test ! -e "$C1"
# with no cache, a raw image lacks every distinct non-zero block
check "empty cache: a.raw lacks its distinct data blocks" \
  test "$(missing "$WORK/e0.json" a.raw)" = "$(missing_bytes "$R/a.raw")"
python3 - "$WORK/e0.json" <<'PY' || fail "seconds or boot_bytes_missing wrong"
import json, sys
for e in json.load(open(sys.argv[1]))["images"]:
    assert e["boot_bytes_missing"] is None, e
    assert abs(e["seconds"] - e["bytes_missing"] / 1048576) < 1e-3, e
PY
echo "ok: seconds = bytes_missing / bandwidth; boot_bytes_missing null"
agree "$C1" a.raw "no pack, empty cache, a.raw"
# the sibling a is cached now: b lacks what a does not hold
estimate "$C1" "$WORK/e1.json"
check "no pack, sibling cached: b.raw lacks what a.raw does not hold" \
  test "$(missing "$WORK/e1.json" b.raw)" = "$(missing_bytes "$R/b.raw" "$R/a.raw")"
python3 -c 'import json,sys; assert all(e["seconds"] is None for e in json.load(open(sys.argv[1]))["images"])' \
  "$WORK/e1.json" || fail "seconds without --bandwidth is not null"
echo "ok: seconds null without --bandwidth"
agree "$C1" b.raw "no pack, sibling cached, b.raw"
agree "$C1" big.raw "no pack, more than a fetch window, big.raw"
# a streamed member: deploy transfers the whole archive, and so says the estimate
agree "$C1" app.tar.gz/disk.img "no pack, member of a .tar.gz"
check "no pack: the .tar.gz member costs the whole archive" \
  test "$(json_get "$WORK/deploy.json" bytes_fetched)" = "$(stat -c %s "$R/app.tar.gz")"
estimate "$C1" "$WORK/e2.json"
check "everything deployed: nothing missing" \
  test "$(python3 -c 'import json,sys; print(sum(e["bytes_missing"] for e in json.load(open(sys.argv[1]))["images"]))' "$WORK/e2.json")" = 0

# --- with a pack ---
"$IMGDEDUP" pack -q "$R"
C2=$WORK/node2
agree "$C2" a.raw "pack, empty cache, a.raw"
agree "$C2" b.raw "pack, sibling cached, b.raw"
agree "$C2" big.raw "pack, more than a fetch window, big.raw"
agree "$C2" app.tar.gz/disk.img "pack, member of a .tar.gz"
check "pack: the .tar.gz member no longer costs the archive" \
  test "$(json_get "$WORK/deploy.json" bytes_fetched)" -lt "$(stat -c %s "$R/app.tar.gz")"
estimate "$C2" "$WORK/e3.json" --no-pack
C3=$WORK/node3
estimate "$C3" "$WORK/e4.json" --no-pack
check "--no-pack, empty cache: big.raw lacks its distinct data blocks" \
  test "$(missing "$WORK/e4.json" big.raw)" = "$(missing_bytes "$R/big.raw")"

# --- errors ---
set +e
"$IMGDEDUP" cache estimate --cache "$C1" --from "$URL" nosuch.raw 2> "$WORK/err"; rc=$?
set -e
check "an unknown image: exit 1" test $rc = 1
check "... naming it" grep -q nosuch.raw "$WORK/err"
set +e
"$IMGDEDUP" cache estimate --cache "$C1" a.raw 2> /dev/null; rc=$?
"$IMGDEDUP" cache estimate --cache "$C1" --from "$URL" --bandwidth fast a.raw 2> /dev/null; rc2=$?
set -e
check "no --from: exit 2" test $rc = 2
check "a bad --bandwidth: exit 2" test $rc2 = 2

# --- boot profiles ---
# a.raw's boot: every other of its data blocks, as `serve --record` writes
# them (IMAGE, block, digest); published into the index
python3 - "$R/a.raw" "$WORK/a.profile" <<'PY'
import hashlib, sys
d = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "w") as f:
    f.write("# test profile\n")
    k = 0
    for b in range(len(d) // 4096):
        blk = d[b * 4096:(b + 1) * 4096]
        if blk.count(0) == 4096:
            continue
        if k % 2 == 0:
            f.write("a.raw\t%d\t%s\n" % (b, hashlib.sha256(blk).hexdigest()))
        k += 1
PY
"$IMGDEDUP" profile publish "$WORK/a.profile" a.raw "$R" > /dev/null
# want CACHED... : the boot_bytes_missing expected of each image with those
# images cached (raw prices: 4 KiB a block; the member: its whole archive)
want() {
  python3 - "$WORK/a.profile" "$R/app.tar.gz" "$R/a.raw" "$R/b.raw" "$R/big.raw" "$T/tgz/disk.img" "$@" <<'PY'
import hashlib, json, os, sys
prof, tgz, imgs, cached = sys.argv[1], sys.argv[2], sys.argv[3:7], sys.argv[7:]
def digests(p):
    d = open(p, "rb").read()
    return {hashlib.sha256(d[i:i + 4096].ljust(4096, b"\0")).hexdigest()
            for i in range(0, len(d), 4096) if d[i:i + 4096].count(0) != len(d[i:i + 4096])}
P = [l.split("\t")[2].strip() for l in open(prof) if not l.startswith("#")]
have = set().union(*[digests(c) for c in cached]) if cached else set()
out = {}
for name, path in zip(["a.raw", "b.raw", "big.raw", "app.tar.gz/disk.img"], imgs):
    D = digests(path)
    mine = [x for x in P if x in D]
    lack = [x for x in mine if x not in have]
    if not mine:
        out[name] = None
    elif name.startswith("app.tar.gz"):
        out[name] = os.path.getsize(tgz) if lack else 0
    else:
        out[name] = 4096 * len(lack)
print(json.dumps(out, sort_keys=True))
PY
}
# boot JSON -> the boot_bytes_missing of each image, as want prints them
boot() {
  python3 -c 'import json,sys; print(json.dumps({e["image"]: e["boot_bytes_missing"] for e in json.load(open(sys.argv[1]))["images"]}, sort_keys=True))' "$1"
}
C5=$WORK/node5
estimate "$C5" "$WORK/b0.json" --no-pack
w=$(want)
check "boot, empty cache: a.raw's profile, and the part of it each image holds ($w)" \
  test "$(boot "$WORK/b0.json")" = "$w"
check "... a.raw: its profile's blocks" \
  test "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["a.raw"])' "$w")" = $(( $(grep -vc '^#' "$WORK/a.profile") * 4096 ))
check "... b.raw, never booted, borrows a part of it" \
  python3 -c 'import json,sys; w = json.loads(sys.argv[1]); assert 0 < w["b.raw"] < w["a.raw"]' "$w"
"$IMGDEDUP" deploy --from "$URL" --cache "$C5" --no-pack -q b.raw
estimate "$C5" "$WORK/b1.json" --no-pack
w=$(want "$R/b.raw")
check "boot, b.raw cached: what the cache lacks of each ($w)" test "$(boot "$WORK/b1.json")" = "$w"
check "... a.raw lacks less than with nothing cached" \
  python3 -c 'import json,sys; assert 0 < json.loads(sys.argv[1])["a.raw"] < json.loads(sys.argv[2])["a.raw"]' "$w" "$(want)"
estimate "$C1" "$WORK/b2.json" --no-pack
check "boot, everything cached: nothing missing" test "$(boot "$WORK/b2.json")" = "$(want "$R/a.raw" "$R/b.raw" "$R/big.raw" "$T/tgz/disk.img")"
estimate "$C3" "$WORK/b3.json"
check "boot, with the pack: a.raw's boot costs frames, more than nothing" \
  python3 -c 'import json,sys; e = [x for x in json.load(open(sys.argv[1]))["images"] if x["image"] == "a.raw"][0]; assert 0 < e["boot_bytes_missing"] <= e["bytes_missing"], e' "$WORK/b3.json"
