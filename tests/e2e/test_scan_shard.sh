#!/usr/bin/env bash
# A first scan on many machines: `scan --shard K/N` run by N processes at
# once into one index, then `scan --merge`, equals a single scan of the
# whole repository (ls, similarity csv, every block map, info's counts), on
# disk and against a real OpenStack Swift (s3api); a shard that dies is
# re-run; merge reads no image; a later cron scan is incremental; the block
# table follows adds and removals with exact counts.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/swift.sh"
cleanup_fns+=(swift_stop)

R=$WORK/repo
mkdir -p "$R/a" "$R/b"
python3 - "$R" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(3)
base = [rnd.randbytes(4096) for _ in range(48)]
for i in range(14):
    blocks = list(base)
    for k in rnd.sample(range(48), 6 + i % 5):
        blocks[k] = rnd.randbytes(4096) if k % 3 else bytes(4096)
    sub = "a" if i % 2 else "b"
    with open(os.path.join(root, sub, "img%02d.raw" % i), "wb") as f:
        f.write(b"".join(blocks))
PY
age_files "$R"

# the reference: one machine, one scan
cp -a "$R" "$WORK/single"
"$IMGDEDUP" scan -q --json "$WORK/single" > "$WORK/single.json"
"$IMGDEDUP" map -q "$WORK/single"

compare_with_single() { # INDEX_ARGS... REPO: same ls, csv, maps and info as the single scan
  local repo=${*: -1} args=("${@:1:$#-1}")
  "$IMGDEDUP" ls "${args[@]}" "$repo" | awk '{print $1, $2, $3, $4}' > "$WORK/ls.got"
  "$IMGDEDUP" ls "$WORK/single" | awk '{print $1, $2, $3, $4}' > "$WORK/ls.want"
  check "ls equals the single scan's" cmp -s "$WORK/ls.got" "$WORK/ls.want"
  "$IMGDEDUP" similarity "${args[@]}" --format csv "$repo" > "$WORK/sim.got"
  "$IMGDEDUP" similarity --format csv "$WORK/single" > "$WORK/sim.want"
  check "similarity csv equals the single scan's" cmp -s "$WORK/sim.got" "$WORK/sim.want"
  "$IMGDEDUP" map -q "${args[@]}" "$repo"
  local idx=$repo/.imgdedup
  [ "${args[0]:-}" != --index ] || idx=${args[1]}
  check "every block map equals the single scan's" diff -r "$idx/maps" "$WORK/single/.imgdedup/maps" \
    -x index
  "$IMGDEDUP" info --json "${args[@]}" "$repo" b/img00.raw > "$WORK/info.got"
  "$IMGDEDUP" info --json "$WORK/single" b/img00.raw > "$WORK/info.want"
  for k in distinct_blocks exclusive_blocks; do
    check "info $k equals the single scan's" \
      test "$(json_get "$WORK/info.got" $k)" = "$(json_get "$WORK/info.want" $k)"
  done
}

# ---- four shards at once on disk ----
pids=()
for k in 1 2 3 4; do
  "$IMGDEDUP" scan -q --json --shard $k/4 "$R" > "$WORK/shard$k.json" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a shard failed"; done
total=0
for k in 1 2 3 4; do
  n=$(json_get "$WORK/shard$k.json" scanned); total=$((total + n))
  check "shard $k leaves the repository-wide count to the merge" \
    test "$(json_get "$WORK/shard$k.json" unique_blocks)" = None
done
check "the shards together read every image once" test $total = 14
check "no catalog before the merge" test ! -e "$R/.imgdedup/catalog"
# a shard that dies is re-run: its result is replaced, nothing doubles
rm -rf "$R/.imgdedup/shards/3-of-4"
"$IMGDEDUP" scan -q --shard 3/4 "$R"
# (LeakSanitizer cannot run under ptrace: leaks are checked by every other run)
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
  strace -f -e trace=openat -o "$WORK/merge.trace" "$IMGDEDUP" scan --merge --json "$R" > "$WORK/merge.json"
check "merge reads no image" bash -c "! grep -q 'img[0-9]*\\.raw' '$WORK/merge.trace'"
for k in images blocks zero_blocks unique_blocks; do
  check "merge: $k equals the single scan's" \
    test "$(json_get "$WORK/merge.json" $k)" = "$(json_get "$WORK/single.json" $k)"
done
check "the shards' results are spent" test ! -e "$R/.imgdedup/shards"
compare_with_single "$R"
"$IMGDEDUP" verify -q "$R" || fail "verify after the merge"
check "the merge wrote the per-image entries (verify checked them against the catalog)" \
  test "$(ls "$R/.imgdedup/entries" | grep -vc '^index$')" = 14
h=$(printf %s b/img00.raw | sha256sum | cut -d' ' -f1)
"$IMGDEDUP" deploy --from "$R" --cache "$WORK/node" -o "$WORK/b0.raw" --json -q b/img00.raw > "$WORK/dep.json"
check "deploy from the merged index: byte-exact, reading its entry and map only" \
  bash -c "cmp -s '$R/b/img00.raw' '$WORK/b0.raw' && test $(json_get "$WORK/dep.json" bytes_index) = \
    $(( $(stat -c %s "$R/.imgdedup/entries/$h") + $(stat -c %s "$R/.imgdedup/maps/$h.map") ))"

# ---- a cron scan afterwards is incremental and keeps the counts exact ----
old=$(( $(date +%s) - 10 ))
cp "$R/a/img01.raw" "$R/a/copy.raw"; touch -d "@$old" "$R/a/copy.raw"
cp "$R/a/img01.raw" "$WORK/single/a/copy.raw"; touch -d "@$old" "$WORK/single/a/copy.raw"
rm "$R/b/img04.raw" "$WORK/single/b/img04.raw"
"$IMGDEDUP" scan -q --json "$R" > "$WORK/cron.json"
check "cron scan after the merge reads the new image only" test "$(json_get "$WORK/cron.json" scanned)" = 1
rm -rf "$WORK/single/.imgdedup"
"$IMGDEDUP" scan -q --json "$WORK/single" > "$WORK/single.json"
"$IMGDEDUP" map -q "$WORK/single"
check "unique_blocks after an add and a removal equals a scan from scratch" \
  test "$(json_get "$WORK/cron.json" unique_blocks)" = "$(json_get "$WORK/single.json" unique_blocks)"
compare_with_single "$R"

# ---- refusals ----
set +e
"$IMGDEDUP" scan -q --shard 5/4 "$R" 2>"$WORK/err"; rc1=$?
"$IMGDEDUP" scan -q --merge "$R" 2>"$WORK/err2"; rc2=$?
set -e
check "--shard 5/4 is refused" test $rc1 = 2
check "merge with no shard results says so" test $rc2 = 1
grep -q "no shard results" "$WORK/err2" || fail "merge message: $(cat "$WORK/err2")"

# ---- the same against a real Swift: shards at once, index shared ----
swift_start
swift_mb imgs
for f in $(cd "$WORK/single" && find a b -name '*.raw'); do swift_put "$WORK/single/$f" "imgs/r/$f"; done
I=$WORK/s3index
pids=()
for k in 1 2 3; do
  "$IMGDEDUP" scan -q --index "$I" --shard $k/3 s3://imgs/r & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "an s3 shard failed"; done
"$IMGDEDUP" scan -q --index "$I" --merge s3://imgs/r
compare_with_single --index "$I" s3://imgs/r
echo "all shard checks passed"
