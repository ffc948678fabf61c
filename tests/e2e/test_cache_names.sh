#!/usr/bin/env bash
# Node-cache names: every id has a cache name of its own (base.qcow2 and
# base.qcow2.raw used to share one) within NAME_MAX (a 271-character id),
# for deploy and serve --fill, and images an older version cached under the
# shared name move to their own (deploy and serve).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachecorpus.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit nbdcopy nbdinfo qemu-img
cache_corpus

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
check "names: serve reads base.qcow2" cmp -s "$WORK/n3a.raw" "$QREF"
check "names: serve reads base.qcow2.raw" cmp -s "$WORK/n3b.raw" "$REPO/base.qcow2.raw"
check "names: serve reads the long id" cmp -s "$WORK/n3c.raw" "$REPO/$LONGID"
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
check "old cache: serve of base.qcow2 is exact" cmp -s "$WORK/n5.raw" "$QREF"
check "old cache: serve moved base.qcow2's image to its name" cmp "$WORK/c9/images/base.qcow2%.raw" "$QREF"
check "old cache: serve read it all locally" test "$(serve_stat n5 bytes_fetched)" = 0
check "old cache: no partial image made" test ! -e "$WORK/c9/images/base.qcow2%.raw.partial"

echo "PASS test_cache_names"
