#!/usr/bin/env bash
# imgdedup serve --fill (over nginx): with no client reading, the whole
# image is fetched in the background, each distinct block once, every
# non-zero block written into the cache, the export complete; afterwards a
# deploy takes everything from the cache.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit
serve_corpus
nginx_start "$REPO"

serve_start fill --from "$NGINX_URL" --cache "$WORK/cache-fill" --fill base.raw
for _ in $(seq 300); do [ "$(nginx_file_bytes base.raw)" -ge $((NEW_COLD * BS)) ] && break; sleep 0.1; done
sleep 0.5   # the last blocks are written and recorded
serve_stop fill
# the filled image is a whole raw image: every non-zero block in its place
check "--fill: every non-zero block written into the cache" test "$(serve_stat fill blocks_filled)" = $((NONZERO_BYTES / BS))
check "--fill: each distinct block fetched once" test "$(serve_stat fill bytes_fetched)" = $((NEW_COLD * BS))
check "--fill: the export is complete" test "$(serve_stat fill exports_complete)" = 1
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/cache-fill" -o "$WORK/filled.raw" --json -q base.raw \
  > "$WORK/filled.json"
check "--fill: a later deploy reads the image" cmp -s "$WORK/filled.raw" "$REF"
check "--fill: a later deploy fetches nothing" test "$(json_get "$WORK/filled.json" bytes_fetched)" = 0
echo "PASS test_serve_fill"
