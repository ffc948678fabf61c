#!/usr/bin/env bash
# kill -9 scan at random moments: the index stays readable and correct, and
# the next run completes the work.
source "$(dirname "$0")/lib.sh"
R=$WORK/repo; mkdir -p "$R"
for i in 1 2 3 4 5 6; do
  head -c $((40 << 20)) /dev/urandom > "$R/img$i.raw"
done
"$IMGDEDUP" scan -q --index "$WORK/ref" "$R"          # reference index
"$IMGDEDUP" ls --json --index "$WORK/ref" "$R" > "$WORK/ref.json"
hits=0
for round in $(seq 1 12); do
  # half the rounds start from an existing (older) index
  if [ $((round % 2)) = 0 ]; then rm -rf "$R/.imgdedup"; fi
  if [ $((round % 3)) = 0 ]; then head -c $((40 << 20)) /dev/urandom > "$R/img$((round % 6 + 1)).raw"
    "$IMGDEDUP" scan -q --index "$WORK/ref" "$R"; "$IMGDEDUP" ls --json --index "$WORK/ref" "$R" > "$WORK/ref.json"; fi
  "$IMGDEDUP" scan -q --jobs 2 "$R" & pid=$!
  sleep "0.0$(( RANDOM % 10 ))"
  if kill -9 $pid 2>/dev/null; then hits=$((hits + 1)); fi
  wait $pid 2>/dev/null || true
  if [ -e "$R/.imgdedup/catalog" ]; then
    "$IMGDEDUP" verify -q "$R" || fail "round $round: index damaged after kill -9"
  fi
  "$IMGDEDUP" scan -q "$R" || fail "round $round: re-scan after kill"
  "$IMGDEDUP" verify -q "$R" || fail "round $round: verify after re-scan"
  "$IMGDEDUP" ls --json "$R" > "$WORK/got.json"
  cmp -s "$WORK/got.json" "$WORK/ref.json" || fail "round $round: index differs from a clean run"
  left=$(find "$R/.imgdedup" -name '*.tmp.*' | wc -l)
  [ "$left" = 0 ] || fail "round $round: temporary files left after a clean run"
done
# a temporary a killed run left beside the catalog (the kill can land while
# the catalog is being written) goes at the next run, changed or not; one of
# a live process stays
true & dead=$!; wait $dead
echo x > "$R/.imgdedup/catalog.tmp.$dead"
echo x > "$R/.imgdedup/similarity.tmp.$$"
"$IMGDEDUP" scan -q "$R"
check "a dead run's temporary is removed" test ! -e "$R/.imgdedup/catalog.tmp.$dead"
check "a live process's temporary is kept" test -e "$R/.imgdedup/similarity.tmp.$$"
rm -f "$R/.imgdedup/similarity.tmp.$$"
echo "12 kill rounds ($hits hit a running scan): index always intact and complete"
