#!/usr/bin/env bash
# cache gc by value, end to end (nginx, the imgdedup binary, real serve):
#  1. gc keeps the cache under --max-size (cache ls and du agree), and by
#     value it removes a sibling whose contents another cached image holds
#     before an older image of its own, where --policy lru removes the
#     oldest; what it removed deploys again from the sibling without a fetch;
#  2. never a file in use: while a deploy runs (slowed by nginx's rate
#     limit) gc removes every other file but the one it copies from, and the
#     deploy completes byte-exact; while serve exports an image, gc removes
#     none of the files serve holds open (its partial image included); once
#     serve stopped, gc meets the budget.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachebudget.sh"
cleanup_fns+=(nginx_stop)

own=/usr/share/zoneinfo/Europe; [ -d "$own" ] || own=/usr/share/doc
budget_corpus 600000 "$own"
# fill CACHE: old, then sib1, then sib2 (read in that order)
fill() {
  deploy "$1" old.raw
  sleep 0.01
  deploy "$1" sib1.raw
  sleep 0.01
  deploy "$1" sib2.raw
}

C=$WORK/cv
fill "$C"
total=$(disk "$C")
one=$(du -B1 "$C/images/old.raw" | cut -f1)
max=$((total - 1))
"$IMGDEDUP" cache gc --max-size "$max" --json "$C" > "$WORK/gc.json"
check "value: one image removed" test "$(json_get "$WORK/gc.json" images_removed)" = 1
check "value: under the budget (gc)" test "$(json_get "$WORK/gc.json" bytes_after)" -le "$max"
check "value: under the budget (cache ls)" test "$(disk "$C")" -le "$max"
check "value: under the budget (du)" test "$(du -sB1 "$C/images" | cut -f1)" -le "$max"
check "value: the older sibling went" test ! -e "$C/images/sib1.raw"
check "value: the image of its own stayed" test -e "$C/images/old.raw"
lacks=$(missing_bytes "$R/sib1.raw" "$R/sib2.raw" "$R/old.raw")
deploy "$C" sib1.raw
check "value: the removed sibling deploys again fetching only what no kept image holds" \
  test "$(json_get "$WORK/d.json" bytes_fetched)" = "$lacks"
check "... a small part of it" test $((lacks * 10)) -lt "$(missing_bytes "$R/sib1.raw")"
check "... byte-exact" cmp "$R/sib1.raw" "$C/images/sib1.raw"

C=$WORK/cl
fill "$C"
"$IMGDEDUP" cache gc --max-size "$(( $(disk "$C") - 1 ))" --policy lru --json "$C" > "$WORK/gc.json"
check "lru: the least recently read went" test ! -e "$C/images/old.raw"
check "lru: the siblings stayed" test -e "$C/images/sib1.raw"
lacks=$(missing_bytes "$R/old.raw" "$R/sib1.raw" "$R/sib2.raw")
deploy "$C" old.raw
check "lru: the removed image costs what the siblings do not hold" \
  test "$(json_get "$WORK/d.json" bytes_fetched)" = "$lacks"
check "... nearly all of it" test $((lacks * 10)) -gt "$(( $(missing_bytes "$R/old.raw") * 9 ))"
"$IMGDEDUP" cache gc --max-size "$one" --json "$C" > "$WORK/gc.json"
check "a budget of one image's size: under it" test "$(disk "$C")" -le "$one"
set +e
"$IMGDEDUP" cache gc --max-size 1M --policy newest "$C" 2> /dev/null; rc=$?
set -e
check "an unknown --policy: exit 2" test $rc = 2

# a deploy copying from sib1 (slow.raw starts with it), its fetch slowed
C=$WORK/cu
deploy "$C" sib1.raw   # first in the cache index: its copies of shared content are read
deploy "$C" old.raw
deploy "$C" sib2.raw
nginx_stop
NGINX_LIMIT_RATE=300k nginx_start "$R"
URL=$NGINX_URL
"$IMGDEDUP" deploy --from "$URL" --cache "$C" --json slow.raw > "$WORK/slow.json" 2> "$WORK/slow.err" &
dpid=$!
# wait until the deploy holds only what it copies from (it opens every
# cache file, then keeps those it needs)
in_use() {
  "$IMGDEDUP" cache ls --json "$C" | python3 -c '
import json, sys
print(" ".join(sorted(i["path"].rsplit("/", 1)[1] for i in json.load(sys.stdin)["images"] if i["in_use"])))'
}
for i in $(seq 600); do
  u=$(in_use)
  [ -n "$u" ] && [ "$u" != "old.raw sib1.raw sib2.raw" ] && break
  kill -0 $dpid 2>/dev/null || break
  sleep 0.05
done
kill -0 $dpid 2>/dev/null || fail "the deploy ended before gc could run (in use: '$u'): $(cat "$WORK/slow.err")"
"$IMGDEDUP" cache gc --max-size 0 --json "$C" > "$WORK/gc.json" 2> "$WORK/gc.err"
still=$(kill -0 $dpid 2>/dev/null && echo running || echo done)
wait $dpid || fail "the deploy failed: $(cat "$WORK/slow.err")"
[ "$still" = running ] || fail "the deploy ended while gc ran: the check proves nothing"
for f in $u; do
  check "deploy running: gc kept $f, which it copies from" test -e "$C/images/$f"
done
check "... and warned about it" grep -q "in use; kept" "$WORK/gc.err"
check "deploy running: it kept sib1.raw only" test "$u" = sib1.raw
check "deploy running: gc removed the files it does not use" \
  test "$(ls "$C/images" | grep -c '\.raw$')" = 2
check "the deploy completed byte-exact" cmp "$R/slow.raw" "$C/images/slow.raw"
check "... from local copies too" test "$(json_get "$WORK/slow.json" bytes_from_cache)" -gt 0
nginx_stop
nginx_start "$R"
URL=$NGINX_URL

# serve: the export's files, and every cache file it holds open
C=$WORK/cs
fill "$C"
serve_start sv --from "$URL" --cache "$C" slow.raw
# a guest's first reads: part of the image, fetched into a partial image
qemu-io -r -f raw -c "read -P 0 0 512" -c "read 8M 1M" "$(serve_uri sv slow.raw)" > "$WORK/qio.out" 2>&1 ||
  fail "reading the export: $(cat "$WORK/qio.out")"
ls "$C/images" > "$WORK/before"
grep -q '\.partial$' "$WORK/before" || fail "serve left no partial image to protect: $(cat "$WORK/before")"
"$IMGDEDUP" cache gc --max-size 0 --json "$C" > "$WORK/gc.json" 2> "$WORK/gc.err"
ls "$C/images" > "$WORK/after"
check "serve running: gc removed nothing serve holds open" cmp "$WORK/before" "$WORK/after"
check "... and said so" grep -q "in use; kept" "$WORK/gc.err"
serve_stop sv
"$IMGDEDUP" cache gc --max-size 0 --json "$C" > "$WORK/gc.json"
check "serve stopped: gc meets the budget" test "$(disk "$C")" = 0
