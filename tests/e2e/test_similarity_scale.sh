#!/usr/bin/env bash
# similarity at a size where the matrix does not fit a small budget: a
# synthetic index (bench/gen_index.c) of 20,000 images x 128 blocks, where
# the n x n counts alone would take 3.2 GB.  --top K must answer within
# 256 MiB (1 GiB under ASan) (peak RSS from /usr/bin/time -v), report exact values and
# find the exact top K of a random sample (bench/sim_recall.c); the full
# matrix of 1,000 of those images is checked the same way after an image is
# added to its cache.
source "$(dirname "$0")/lib.sh"
root=$TESTS_DIR/../..
lib=$(dirname "$IMGDEDUP")/libimgdedup.a
san=; [ "$(nm "$lib" 2>/dev/null | grep -c __asan_)" != 0 ] && san="-fsanitize=address,undefined"   # the ASan build
for tool in gen_index sim_recall; do
  cc -O1 -std=c11 -D_GNU_SOURCE $san -I"$root/lib" "$root/bench/$tool.c" "$lib" \
    $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$WORK/$tool" \
    || fail "cannot build $tool"
done
# peak RSS in MiB of a command (its output discarded)
peak_mib() { /usr/bin/time -v "$@" 2> "$WORK/time.txt" > /dev/null || { cat "$WORK/time.txt" >&2; return 1; }
  echo $(( $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt") / 1024 )); }

I=$WORK/big/.imgdedup
"$WORK/gen_index" "$I" 20000 128 10 > /dev/null
mib=$(peak_mib "$IMGDEDUP" similarity -q --top 3 --index "$I" -o "$WORK/top.csv" "$WORK/big")
echo "--top 3 over 20,000 images: peak RSS $mib MiB"
# ASan keeps freed memory in quarantine (256 MiB) and adds its shadow
limit=256; [ -n "$san" ] && limit=1024
check "--top 3 of 20,000 images within $limit MiB (the matrix alone: 3.2 GB)" test "$mib" -lt "$limit"
check "three seeds for every image" test "$(tail -n +2 "$WORK/top.csv" | wc -l)" = 60000
"$WORK/sim_recall" "$I" 3 "$WORK/top.csv" 200 3 > "$WORK/recall.txt" || fail "a reported value is not exact: $(cat "$WORK/recall.txt")"
cat "$WORK/recall.txt"
check "recall of the exact top 3 at least 0.99" python3 -c '
import sys; r = float(open(sys.argv[1]).read().split()[1]); sys.exit(r < 0.99)' "$WORK/recall.txt"

# the full matrix of 1,000 images, its cache updated when one is added
M=$WORK/mid/.imgdedup
GEN_INDEX_WITHOUT=1 "$WORK/gen_index" "$M" 1000 128 10 > /dev/null
cp "$M/catalog" "$WORK/catalog.all"
cp "$M/without-1/catalog" "$M/catalog"
"$IMGDEDUP" similarity -q --index "$M" -o /dev/null "$WORK/mid"
cp "$WORK/catalog.all" "$M/catalog"
"$IMGDEDUP" similarity -q --format json --index "$M" -o "$WORK/m.json" "$WORK/mid"
check "one image added: one row computed" test "$(json_get "$WORK/m.json" rows_computed)" = 1
"$IMGDEDUP" similarity -q --no-cache --format json --index "$M" -o "$WORK/m2.json" "$WORK/mid"
check "the updated matrix equals a fresh one" python3 -c '
import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["images"] == b["images"] and a["matrix"] == b["matrix"]' "$WORK/m.json" "$WORK/m2.json"
"$IMGDEDUP" similarity -q --top 3 --index "$M" -o "$WORK/mtop.csv" "$WORK/mid"
"$WORK/sim_recall" "$M" 3 "$WORK/mtop.csv" 100 5 > "$WORK/recall2.txt" || fail "$(cat "$WORK/recall2.txt")"
check "--top 3 of 1,000 images: exact values, recall at least 0.99" python3 -c '
import sys; r = float(open(sys.argv[1]).read().split()[1]); sys.exit(r < 0.99)' "$WORK/recall2.txt"
echo "all similarity scale checks passed"
