#!/usr/bin/env bash
# The blocks of a cached image, as serve and cache ls see them:
#  1. a complete image damaged behind imgdedup's back: the first serve that
#     reads a damaged block checks the whole image and repairs it in place
#     once (only its damaged blocks fetched, the damage reported), the next
#     run is clean;
#  2. cache ls counts blocks of the image (repeats included) present against
#     the image's data blocks: an image read in full is 100% present (--json
#     and text).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachecorpus.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit nbdcopy nbdinfo qemu-img
cache_corpus

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
check "damaged image, next run: the read is exact" cmp -s "$WORK/d2.raw" "$REPO/b.raw"
check "damaged image, next run: nothing fetched" test "$(serve_stat d2 bytes_fetched)" = 0
check "damaged image, next run: no warning" test ! -s "$WORK/d2.err"
"$IMGDEDUP" cache ls --json "$WORK/c4" > "$WORK/ls4.json"
check "damaged image: cache ls lists it, complete, alone" python3 - "$WORK/ls4.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["images"]
sys.exit(not (len(v) == 1 and not v[0]["partial"] and v[0]["path"].endswith("/b.raw")))
PY

serve_start r1 --from "$NGINX_URL" --cache "$WORK/c5" rep.raw
nbdcopy --no-extents "$(serve_uri r1 rep.raw)" "$WORK/r1.raw"
serve_stop r1
check "cache ls: the full read of rep.raw is exact" cmp -s "$WORK/r1.raw" "$REPO/rep.raw"
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

echo "PASS test_cache_repair"
