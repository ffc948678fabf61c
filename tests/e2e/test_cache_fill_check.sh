#!/usr/bin/env bash
# serve --fill never turns a partial image into a complete one without
# checking every block against the current map (nginx, real serve): the
# repository image changed in place since the partial was filled, bytes of
# the partial flipped offline, the partial truncated to 0.  The repository
# is the script's own (it changes an image).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachecorpus.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit nbdcopy nbdinfo qemu-img
cache_corpus_own

# a) the repository image changed in place (same size) after a serve read it
serve_start f1 --from "$NGINX_URL" --cache "$WORK/c1" a.raw
nbdcopy --no-extents "$(serve_uri f1 a.raw)" "$WORK/f1.raw"
serve_stop f1
check "changed source: the first read is exact" cmp -s "$WORK/f1.raw" "$REPO/a.raw"
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
check "changed source: a deploy from the filled cache is exact" cmp -s "$WORK/f2.raw" "$REPO/a.raw"
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

echo "PASS test_cache_fill_check"
