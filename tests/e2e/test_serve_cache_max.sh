#!/usr/bin/env bash
# serve --cache-max, end to end (nginx, real serve through nbdkit, nbdcopy):
#  1. serve removes what is worth least until the cache fits (a sibling whose
#     contents another kept image holds, then an image of its own, never the
#     one still worth most), the file it would have read shared content from
#     included: the export reads byte-exact, that content from the sibling
#     kept (no fetch of it), and its own partial image stays;
#  2. never a file a deploy uses: with a budget of 1 byte, serve removes the
#     cache files but the one a running deploy copies from (slowed by
#     nginx's rate limit) and its own export's; the deploy (to a file
#     outside the cache, which serve does not own: the cache copy would race
#     the check) completes byte-exact; once it is done serve removes the
#     file it copied from too, the one its export read from included, only
#     forgets the deployed file (it is not the cache's to delete), and the
#     export reads on byte-exact.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachebudget.sh"
cleanup_fns+=(nginx_stop)

budget_corpus 3000000
du1() { du -B1 "$1" | cut -f1; }
# wait_gone FILE...: until serve removed them (it checks every second)
wait_gone() {
  local i f left
  for i in $(seq 300); do
    left=
    for f in "$@"; do [ -e "$f" ] && left="$left $f"; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  fail "serve did not remove$left: $(cat "$WORK"/s*.err; ls -la "$C/images"; "$IMGDEDUP" cache ls "$C")"
}

# ---- 1. by value, and the file serve read from ------------------------------
C=$WORK/c1
deploy "$C" sib1.raw   # first in the cache index: serve reads shared content from it
sleep 0.01
deploy "$C" old.raw
sleep 0.01
deploy "$C" sib2.raw
# room for sib2 and what the export fetches, not for old or sib1 as well
lacks=$(missing_bytes "$R/slow.raw" "$R/sib2.raw")
budget=$(( $(du1 "$C/images/sib2.raw") + lacks + 512 * 1024 ))
[ "$(disk "$C")" -gt "$budget" ] || fail "the test's cache fits its budget: nothing to remove"
serve_start s1 --from "$URL" --cache "$C" --cache-max "$budget" slow.raw
# before any read (a read makes the file it reads from the most recent)
wait_gone "$C/images/sib1.raw" "$C/images/old.raw"
nbdcopy "$(serve_uri s1 slow.raw)" "$WORK/first.raw"
check "the sibling worth most stayed" test -e "$C/images/sib2.raw"
check "the export's partial image stayed" test -e "$C/images/slow.raw.partial"
check "under the budget" test "$(disk "$C")" -le "$budget"
nbdcopy "$(serve_uri s1 slow.raw)" "$WORK/second.raw"
serve_stop s1
check "the export reads byte-exact" cmp "$R/slow.raw" "$WORK/first.raw"
check "... again" cmp "$R/slow.raw" "$WORK/second.raw"
check "serve counts the two files it removed" test "$(serve_stat s1 cache_evicted)" = 2
check "shared content came from the cache" test "$(serve_stat s1 bytes_from_cache)" -gt 0
check "... so that serve fetched less than the image's own blocks" \
  test "$(serve_stat s1 bytes_fetched)" -lt "$(missing_bytes "$R/slow.raw")"
check "still under the budget" test "$(disk "$C")" -le "$budget"

# ---- 2. never what a deploy uses ------------------------------------------
C=$WORK/c2
deploy "$C" sib1.raw
deploy "$C" old.raw
nginx_stop
NGINX_LIMIT_RATE=200k nginx_start "$R"
URL=$NGINX_URL
"$IMGDEDUP" deploy --from "$URL" --cache "$C" -o "$WORK/slow.raw" --json slow.raw > "$WORK/slow.json" 2> "$WORK/slow.err" &
dpid=$!
# wait until the deploy holds only what it copies from
in_use() {
  "$IMGDEDUP" cache ls --json "$C" | python3 -c '
import json, sys
print(" ".join(sorted(i["path"].rsplit("/", 1)[1] for i in json.load(sys.stdin)["images"] if i["in_use"])))'
}
for i in $(seq 600); do
  u=$(in_use)
  [ "$u" = sib1.raw ] && break
  kill -0 $dpid 2>/dev/null || break
  sleep 0.05
done
[ "$u" = sib1.raw ] || fail "the deploy does not hold sib1.raw alone (in use: '$u'): $(cat "$WORK/slow.err")"
serve_start s2 --from "$URL" --cache "$C" --cache-max 1 sib2.raw
qemu-io -r -f raw -c "read 0 64k" "$(serve_uri s2 sib2.raw)" > "$WORK/qio.out" 2>&1 ||
  fail "reading the export: $(cat "$WORK/qio.out")"
wait_gone "$C/images/old.raw"
still=$(kill -0 $dpid 2>/dev/null && echo running || echo done)
kept=$(test -e "$C/images/sib1.raw" && echo kept || echo removed)
wait $dpid || fail "the deploy failed: $(cat "$WORK/slow.err")"
[ "$still" = running ] || fail "the deploy ended before serve removed a file: the check proves nothing"
check "deploy running: serve kept sib1.raw, which it copies from" test "$kept" = kept
check "the deploy completed byte-exact" cmp "$R/slow.raw" "$WORK/slow.raw"
check "... from local copies too" test "$(json_get "$WORK/slow.json" bytes_from_cache)" -gt 0
wait_gone "$C/images/sib1.raw"
check "serve's export kept its partial image" test -e "$C/images/sib2.raw.partial"
nbdcopy "$(serve_uri s2 sib2.raw)" "$WORK/sib2.raw"
serve_stop s2
check "the export reads byte-exact after serve removed what it read from" \
  cmp "$R/sib2.raw" "$WORK/sib2.raw"
check "serve counts the three files it removed (two deleted, the one outside forgotten)" \
  test "$(serve_stat s2 cache_evicted)" = 3
check "... the deployed image outside the cache, which it does not own, left as it was" \
  cmp "$R/slow.raw" "$WORK/slow.raw"
check "... and said that what is left is in use" grep -q "cache-max: the cache takes" "$WORK/s2.err"
