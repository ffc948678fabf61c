#!/usr/bin/env bash
# imgdedup similarity against an independent python3 computation: generated
# raw images with known overlaps, then real ext4 images of /usr/share subsets.
source "$(dirname "$0")/lib.sh"
REF="python3 $TESTS_DIR/simref.py"

# --- generated raw images: families, zero blocks, repeats, a partial last block
R=$WORK/raw; mkdir -p "$R/sub"
python3 - "$R" <<'PY'
import os, random, sys
r = random.Random(7); bs = 4096; d = sys.argv[1]
blk = lambda: bytes(r.getrandbits(8) for _ in range(64)) * (bs // 64)
base = [blk() for _ in range(120)]; other = [blk() for _ in range(90)]
def w(name, blocks, tail=b""):
    with open(os.path.join(d, name), "wb") as f:
        f.write(b"".join(blocks) + tail)
w("a.raw", base)
w("b.raw", base[:90] + [blk() for _ in range(30)])
w("sub/c.raw", base[:40] + [bytes(bs)] * 25 + [base[5]] * 15 + other[:10], tail=b"x" * 100)
w("d.img", other + [bytes(bs)] * 10)
w("e.raw", other[:80] + base[100:110] + [other[3]] * 7)
w("empty.raw", [])
PY
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity "$R" > "$WORK/j.csv"
check "jaccard csv matches python" $REF check "$WORK/j.csv" jaccard 4096 "$R"
check "csv sorted by id" test "$(head -1 "$WORK/j.csv")" = "image,a.raw,b.raw,d.img,e.raw,empty.raw,sub/c.raw"
"$IMGDEDUP" similarity --metric containment -o "$WORK/c.csv" "$R"
check "containment csv (-o) matches python" $REF check "$WORK/c.csv" containment 4096 "$R"
"$IMGDEDUP" similarity --metric containment --order cluster "$R" > "$WORK/cc.csv"
check "clustered containment csv matches python" $REF check "$WORK/cc.csv" containment 4096 "$R"
# the a/b/c family and the d/e family each contiguous in the clustered order
order=$(head -1 "$WORK/cc.csv" | cut -d, -f2- | tr , ' ')
python3 - $order <<'PY' || fail "families not contiguous: $order"
import sys
o = sys.argv[1:]; fam = {"a.raw": 0, "b.raw": 0, "sub/c.raw": 0, "d.img": 1, "e.raw": 1, "empty.raw": 2}
seq = [fam[x] for x in o]
runs = [f for i, f in enumerate(seq) if i == 0 or seq[i - 1] != f]
assert len(runs) == len(set(runs)), seq
PY
echo "ok: families contiguous in clustered order ($order)"
"$IMGDEDUP" similarity --top 2 "$R" > "$WORK/top.csv"
python3 - "$WORK/top.csv" > "$WORK/top.got" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]))); by = {}
for r in rows: by.setdefault(r["image"], []).append(r["seed"])
for a in sorted(by): print(",".join([a] + by[a]))
PY
$REF top 2 4096 "$R" > "$WORK/top.want"
check "--top 2 seeds match python" diff "$WORK/top.want" "$WORK/top.got"
"$IMGDEDUP" similarity --format json "$R" > "$WORK/s.json"
check "json is cached result and parses" python3 -c '
import json, sys; d = json.load(open(sys.argv[1]))
assert d["from_cache"] is True and d["metric"] == "jaccard" and len(d["matrix"]) == len(d["images"]) == 6
assert all(d["matrix"][i][i] == 1 for i in range(6))' "$WORK/s.json"
"$IMGDEDUP" similarity --format svg -o "$WORK/s.svg" "$R"
check "svg parses and names every image" python3 -c '
import sys, xml.etree.ElementTree as ET; t = ET.parse(sys.argv[1]); s = open(sys.argv[1]).read()
assert all(n in s for n in ["a.raw", "b.raw", "sub/c.raw", "d.img", "e.raw", "empty.raw"])' "$WORK/s.svg"
# the cache follows the index: change an image, re-scan, the matrix follows
head -c 8192 /dev/urandom | dd of="$R/b.raw" bs=4096 seek=3 conv=notrunc 2>/dev/null
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity --format json "$R" > "$WORK/s2.json"
check "changed index recomputed" test "$(json_get "$WORK/s2.json" from_cache)" = False
check "only the changed image's row computed" test "$(json_get "$WORK/s2.json" rows_computed)" = 1
"$IMGDEDUP" similarity "$R" > "$WORK/j2.csv"
check "jaccard after change matches python" $REF check "$WORK/j2.csv" jaccard 4096 "$R"
# an image added, then one removed: the cache is updated, not recomputed
cat "$R/e.raw" "$R/a.raw" > "$R/f.raw"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity --format json "$R" > "$WORK/s3.json"
check "added image: one row computed" test "$(json_get "$WORK/s3.json" rows_computed)" = 1
"$IMGDEDUP" similarity --metric containment "$R" > "$WORK/c3.csv"
check "containment after an addition matches python" $REF check "$WORK/c3.csv" containment 4096 "$R"
rm "$R/d.img"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity --format json "$R" > "$WORK/s4.json"
check "removed image: its row dropped, none computed" \
  test "$(json_get "$WORK/s4.json" rows_dropped)" = 1 -a "$(json_get "$WORK/s4.json" rows_computed)" = 0
"$IMGDEDUP" similarity "$R" > "$WORK/j4.csv"
check "jaccard after a removal matches python" $REF check "$WORK/j4.csv" jaccard 4096 "$R"
# usage and failures
set +e
"$IMGDEDUP" similarity --metric cosine "$R" 2>/dev/null; rc1=$?
"$IMGDEDUP" similarity --format svg --top 3 "$R" 2>/dev/null; rc2=$?
"$IMGDEDUP" similarity "$WORK/nothing" 2>"$WORK/err"; rc3=$?
"$IMGDEDUP" similarity -o "$WORK/no/such/dir/x.csv" "$R" 2>/dev/null; rc4=$?
set -e
check "bad metric is a usage error" test $rc1 = 2
check "svg with --top is a usage error" test $rc2 = 2
check "no index: exit 1 with a message" test $rc3 = 1 -a -s "$WORK/err"
check "unwritable -o: exit 1" test $rc4 = 1
check "no temporary left by -o" test -z "$(ls "$WORK" | grep tmp || true)"

# --- real ext4 images over overlapping subsets of /usr/share
E=$WORK/ext4; mkdir -p "$E/imgs"
src=/usr/share/doc
mapfile -t pk < <(ls "$src" | head -n 60)
mk() { local d=$WORK/tree.$1; mkdir -p "$d"; shift; for p in "$@"; do cp -a "$src/$p" "$d/" 2>/dev/null || true; done; echo "$d"; }
mkext4 "$E/imgs/one.img" 24 "$(mk one "${pk[@]:0:40}")"
mkext4 "$E/imgs/two.img" 24 "$(mk two "${pk[@]:0:30}" "${pk[@]:45:15}")"
mkext4 "$E/imgs/three.img" 24 "$(mk three "${pk[@]:20:40}")"
"$IMGDEDUP" scan -q "$E/imgs"
"$IMGDEDUP" similarity "$E/imgs" > "$WORK/ej.csv"
check "ext4 jaccard matches python" $REF check "$WORK/ej.csv" jaccard 4096 "$E/imgs"
"$IMGDEDUP" similarity --metric containment "$E/imgs" > "$WORK/ec.csv"
check "ext4 containment matches python" $REF check "$WORK/ec.csv" containment 4096 "$E/imgs"
echo "all similarity checks passed"
