#!/usr/bin/env bash
# A node fetches only its image's part of the index: deploy and serve of one
# image from a repository of 200 (nginx counting every request) ask for that
# image's entry, map and pack view (serve also for the list of published
# boot profiles), nothing else of the index (never the
# catalog, the pack index or entries/index), the same 3 requests as from a
# repository of 2; output byte-exact.  An image that is not there is said so
# without the catalog.  An index without entries (an older version's) still
# deploys, through the catalog; the next scan, changing nothing else, writes
# the entries.  Through s3:// on Swift the same: publish uploads the entries
# (of an index that had none, too) and a deploy makes 3 index requests.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/swift.sh"
PROXY_PID=
stop_proxy() {
  if [ -n "${PROXY_PID:-}" ]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
  PROXY_PID=
}
cleanup_fns+=(nginx_stop swift_stop stop_proxy)

BS=4096
# n tiny images in DIR: a shared first block, an own one, a partial tail
make_repo() { # DIR N
  python3 - "$1" "$2" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(d, "g"), exist_ok=True)
shared = random.Random(1).randbytes(4096)
for i in range(n):
    r = random.Random(100 + i)
    name = os.path.join(d, "g" if i % 2 else "", "img%03d.raw" % i)
    open(name, "wb").write(shared + r.randbytes(4096) + r.randbytes(1000 + i))
PY
  age_files "$1"
  "$IMGDEDUP" scan -q "$1"
  "$IMGDEDUP" map -q "$1"
  "$IMGDEDUP" pack -q "$1"
}
BIG=$WORK/big; SMALL=$WORK/small
make_repo "$BIG" 200
make_repo "$SMALL" 2
check "scan wrote an entry per image" test "$(ls "$BIG/.imgdedup/entries" | grep -vc index)" = 200

hex() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
# the index requests of the nginx log so far, "STATUS PATH" sorted (the
# pack's data files hold blocks, not index)
IDX='$2 ~ /\/\.imgdedup\// && $2 !~ /\/pack\/data\//'
index_requests() { awk "$IDX"' {print $3, $2}' "$NGINX_LOG" | sed "s|/$1/.imgdedup/||" | sort; }
parts_of() { # ID: what a node needs of the index for it
  printf '200 entries/%s\n200 maps/%s.map\n200 pack/views/%s\n' "$(hex "$1")" "$(hex "$1")" \
    "$("$IMGDEDUP" info --json "$2" "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["block_list"])')" | sort
}

ln -s "$BIG" "$WORK/www-big"; ln -s "$SMALL" "$WORK/www-small"
nginx_start "$WORK"
ID=g/img117.raw

# ---- deploy: the image's entry, map and view; byte-exact ----
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL/www-big" --cache "$WORK/c1" --json -q "$ID" > "$WORK/d1.json"
check "deploy from 200 images byte-exact" cmp "$BIG/$ID" "$WORK/c1/images/g%2Fimg117.raw"
index_requests www-big > "$WORK/r1"
cat "$WORK/r1"
check "deploy from 200 images: 3 index requests, its entry, map and pack view" \
  diff "$WORK/r1" <(parts_of "$ID" "$BIG")
check "... never the catalog, the pack index or entries/index" \
  bash -c "! grep -q 'catalog\|pack/index\|entries/index' '$NGINX_LOG'"
check "... bytes_index = those three files" \
  test "$(json_get "$WORK/d1.json" bytes_index)" = "$(awk "$IDX"' {s += $4} END {print s}' "$NGINX_LOG")"
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL/www-small" --cache "$WORK/c2" -q -o "$WORK/s.out" g/img001.raw
check "deploy from 2 images: byte-exact" cmp "$SMALL/g/img001.raw" "$WORK/s.out"
check "... the same 3 index requests as from 200" test "$(index_requests www-small | wc -l)" = 3

# ---- serve: the same three, and the bytes right ----
nginx_log_reset
serve_start s1 --from "$NGINX_URL/www-big" --cache "$WORK/c3" img042.raw
nbdcopy "$(serve_uri s1 img042.raw)" "$WORK/serve.out"
serve_stop s1
check "serve from 200 images byte-exact" cmp "$BIG/img042.raw" "$WORK/serve.out"
index_requests www-big > "$WORK/r2"
# serve also asks which boot profiles are published (none here: a 404)
serve_parts() { { parts_of "$1" "$2"; echo "404 profiles/index"; } | sort; }
check "serve from 200 images: its entry, map and pack view, and the list of boot profiles" \
  diff "$WORK/r2" <(serve_parts img042.raw "$BIG")

# ---- an image that is not there: said so, the catalog not fetched ----
nginx_log_reset
rc=0; "$IMGDEDUP" deploy --from "$NGINX_URL/www-big" --cache "$WORK/c1" -q nope.raw 2> "$WORK/err" || rc=$?
check "a missing image: exit 1 (rc $rc)" test "$rc" = 1
check "... 'no image'" grep -q "no image 'nope.raw'" "$WORK/err"
check "... from its entry and entries/index, not the catalog" \
  diff <(index_requests www-big) <(printf '200 entries/index\n404 entries/%s\n' "$(hex nope.raw)" | sort)

# ---- an index without entries (as an older imgdedup wrote it) ----
OLD=$BIG; rm -r "$OLD/.imgdedup/entries"
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL/www-big" --cache "$WORK/c4" -q -o "$WORK/old.out" "$ID"
check "an index without entries still deploys, byte-exact" cmp "$BIG/$ID" "$WORK/old.out"
check "... through the catalog (fetched once)" test "$(index_requests www-big | grep -c ' catalog$')" = 1
"$IMGDEDUP" scan --json "$OLD" > "$WORK/up.json"
check "scan over it reads no image" test "$(json_get "$WORK/up.json" scanned)" = 0
check "... and writes the 200 entries" test "$(ls "$OLD/.imgdedup/entries" | grep -vc index)" = 200
"$IMGDEDUP" verify -q "$OLD"
nginx_log_reset
"$IMGDEDUP" deploy --from "$NGINX_URL/www-big" --cache "$WORK/c5" -q -o "$WORK/old2.out" "$ID"
check "then 3 index requests" diff <(index_requests www-big) <(parts_of "$ID" "$OLD")
nginx_stop

# ---- the same through s3:// on Swift ----
swift_start
swift_mb nodes
swift_put "$BIG/$ID" "nodes/repo/$ID"
swift_put "$BIG/img042.raw" nodes/repo/img042.raw
# the index as an older version left it: publish writes and uploads the entries
rm -r "$BIG/.imgdedup/entries"
"$IMGDEDUP" publish --json --to s3://nodes/repo "$BIG" > "$WORK/p.json"
check "publish of an index without entries: entries written locally" \
  test "$(ls "$BIG/.imgdedup/entries" | grep -vc index)" = 200
nfiles=$(cd "$BIG/.imgdedup" && find . -path ./pack/lists -prune -o -type f ! -name lock ! -name publish-state ! -name '*.tmp.*' -print | grep -c .)
check "... and every index file uploaded ($nfiles)" test "$(json_get "$WORK/p.json" uploaded)" = "$nfiles"
python3 "$TESTS_DIR/s3proxy.py" --upstream "${SWIFT_URL#http://}" --port-file "$WORK/proxy.port" \
  --log "$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do [ -s "$WORK/proxy.port" ] && break; sleep 0.05; done
PROXY_URL=http://127.0.0.1:$(cat "$WORK/proxy.port")
s3_index_requests() { awk "$IDX"' {print $3, $2}' "$WORK/proxy.log" | sed 's|/nodes/repo/.imgdedup/||' | sort; }
AWS_ENDPOINT_URL=$PROXY_URL "$IMGDEDUP" deploy --from s3://nodes/repo --cache "$WORK/c6" -q -o "$WORK/s3.out" "$ID"
check "deploy from s3:// byte-exact" cmp "$BIG/$ID" "$WORK/s3.out"
check "... its entry, map and pack view: 3 index requests" diff <(s3_index_requests) <(parts_of "$ID" "$BIG")
: > "$WORK/proxy.log"
AWS_ENDPOINT_URL=$PROXY_URL serve_start s3 --from s3://nodes/repo --cache "$WORK/c8" img042.raw
nbdcopy "$(serve_uri s3 img042.raw)" "$WORK/s3serve.out"
serve_stop s3
check "serve from s3:// byte-exact" cmp "$BIG/img042.raw" "$WORK/s3serve.out"
check "... its entry, map and pack view, and the list of boot profiles" \
  diff <(s3_index_requests) <(serve_parts img042.raw "$BIG")
echo "test_node_index: all passed"
