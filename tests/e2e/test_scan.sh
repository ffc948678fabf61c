#!/usr/bin/env bash
# scan end to end: digests and counts against python3 hashlib on generated
# images and real ext4 images; incremental runs; the lock; bad images.
source "$(dirname "$0")/lib.sh"
R=$WORK/repo
mkdir -p "$R/sub" "$WORK/trees/a" "$WORK/trees/b"

# generated images: random data, zero runs, an odd tail, a sparse image
python3 - "$R" <<'PY'
import os, random, sys
r = sys.argv[1]; random.seed(42)
blk = lambda: bytes(random.getrandbits(8) for _ in range(4096))
common = [blk() for _ in range(64)]
open(f"{r}/gen1.raw", "wb").write(b"".join(common) + b"\0" * 8192 + blk() + b"tail" * 25)
open(f"{r}/sub/gen2.img", "wb").write(b"".join(common[16:]) + common[0] + common[0])
PY
truncate -s 2G "$R/sparse.raw"
printf 'sparse data' | dd of="$R/sparse.raw" bs=1 seek=$((1536 * 1024 * 1024 + 100)) conv=notrunc 2>/dev/null
: > "$R/empty.img"
echo "not an image" > "$R/README.txt"

# real ext4 images over overlapping subsets of /usr/share
find /usr/share/doc -type f -size -512k 2>/dev/null | sort | awk 'NR <= 400' > "$WORK/files"
head -n 300 "$WORK/files" | xargs -d '\n' cp --parents -t "$WORK/trees/a" 2>/dev/null || true
tail -n 300 "$WORK/files" | xargs -d '\n' cp --parents -t "$WORK/trees/b" 2>/dev/null || true
mkext4 "$R/ext4-a.img" 24 "$WORK/trees/a"
mkext4 "$R/ext4-b.img" 24 "$WORK/trees/b"

age_files "$R" # a re-run below must find them unchanged
"$IMGDEDUP" scan --json -q "$R" > "$WORK/s1.json"
cat "$WORK/s1.json"
imgs=(empty.img ext4-a.img ext4-b.img gen1.raw sparse.raw sub/gen2.img)
python3 "$TESTS_DIR/blockhash.py" --summary 4096 "${imgs[@]/#/$R/}" > "$WORK/want.json"
for k in blocks zero_blocks unique_blocks; do
  check "$k matches python" [ "$(json_get "$WORK/s1.json" $k)" = "$(json_get "$WORK/want.json" $k)" ]
done
check "images=6" [ "$(json_get "$WORK/s1.json" images)" = 6 ]
check "scanned=6" [ "$(json_get "$WORK/s1.json" scanned)" = 6 ]
for im in "${imgs[@]}"; do
  "$IMGDEDUP" info --blocks "$R" "$im" > "$WORK/got"
  python3 "$TESTS_DIR/blockhash.py" "$R/$im" 4096 > "$WORK/want"
  check "every digest of $im equals python's" cmp -s "$WORK/got" "$WORK/want"
done
"$IMGDEDUP" info "$R" ext4-a.img | grep -q 'format: *raw' || fail "info shows the format"

# a re-run over an unchanged repository hashes nothing
"$IMGDEDUP" scan --json -q "$R" > "$WORK/s2.json"
check "re-run: scanned=0" [ "$(json_get "$WORK/s2.json" scanned)" = 0 ]
check "re-run: bytes_hashed=0" [ "$(json_get "$WORK/s2.json" bytes_hashed)" = 0 ]
check "re-run: unchanged=6" [ "$(json_get "$WORK/s2.json" unchanged)" = 6 ]

# a rename is recognised; a removal leaves the index; a change is re-read
mv "$R/ext4-b.img" "$R/sub/ext4-renamed.img"
rm "$R/gen1.raw"
printf 'changed' | dd of="$R/ext4-a.img" bs=1 seek=5000 conv=notrunc 2>/dev/null
"$IMGDEDUP" scan --json -q "$R" > "$WORK/s3.json"
cat "$WORK/s3.json"
check "renamed=1" [ "$(json_get "$WORK/s3.json" renamed)" = 1 ]
check "removed=1" [ "$(json_get "$WORK/s3.json" removed)" = 1 ]
check "scanned=1 (the changed one)" [ "$(json_get "$WORK/s3.json" scanned)" = 1 ]
"$IMGDEDUP" info --blocks "$R" sub/ext4-renamed.img > "$WORK/got"
python3 "$TESTS_DIR/blockhash.py" "$R/sub/ext4-renamed.img" > "$WORK/want"
check "renamed image keeps its digests" cmp -s "$WORK/got" "$WORK/want"
"$IMGDEDUP" info --blocks "$R" ext4-a.img > "$WORK/got"
python3 "$TESTS_DIR/blockhash.py" "$R/ext4-a.img" > "$WORK/want"
check "changed image re-hashed" cmp -s "$WORK/got" "$WORK/want"
"$IMGDEDUP" verify --deep "$R" >/dev/null || fail "verify --deep after changes"

# --block-size and --index elsewhere (a read-only repository)
"$IMGDEDUP" scan -q --index "$WORK/idx1k" --block-size 1024 "$R"
"$IMGDEDUP" info --index "$WORK/idx1k" --blocks "$R" sub/gen2.img > "$WORK/got"
python3 "$TESTS_DIR/blockhash.py" "$R/sub/gen2.img" 1024 > "$WORK/want"
check "1 KiB blocks, index elsewhere" cmp -s "$WORK/got" "$WORK/want"
set +e
"$IMGDEDUP" scan --block-size 3000 "$R" 2>"$WORK/err"; rc=$?
set -e
check "bad block size is a usage error (2)" [ $rc = 2 ]

# the lock: a held lock makes --no-wait fail with a clear message
exec 9>"$R/.imgdedup/lock"
flock -x 9
set +e
"$IMGDEDUP" scan --no-wait -q "$R" 2>"$WORK/err"; rc=$?
set -e
check "--no-wait on a locked index exits 1" [ $rc = 1 ]
grep -q "locked by another" "$WORK/err" || fail "lock message: $(cat "$WORK/err")"
# without --no-wait the second run waits for the first
( sleep 1; flock -u 9 ) &
"$IMGDEDUP" scan -q "$R" || fail "waiting scan"
wait
exec 9>&-

# a bad image is named, the others still indexed, exit 1
printf 'QFI\xfb\0\0\0\3garbage' > "$R/broken.qcow2"
cp "$R/sub/gen2.img" "$R/new.img"
set +e
"$IMGDEDUP" scan -q --json "$R" > "$WORK/s4.json" 2>"$WORK/err"; rc=$?
set -e
cat "$WORK/err"
check "bad image: exit 1" [ $rc = 1 ]
grep -q "broken.qcow2" "$WORK/err" || fail "the bad image is named"
"$IMGDEDUP" info "$R" new.img >/dev/null || fail "the good image was indexed"
rm "$R/broken.qcow2"

# unreadable file (permissions): run as an unprivileged user when root
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  U=$WORK/urepo; mkdir -p "$U"; cp "$R/sub/gen2.img" "$U/ok.img"; cp "$R/sub/gen2.img" "$U/secret.img"
  chmod 000 "$U/secret.img"; chown -R nobody "$U"; chmod 755 "$WORK"
  set +e
  runuser -u nobody -- "$IMGDEDUP" scan -q "$U" 2>"$WORK/err"; rc=$?
  set -e
  check "unreadable image: exit 1" [ $rc = 1 ]
  grep -q "secret.img" "$WORK/err" || fail "unreadable image named: $(cat "$WORK/err")"
  runuser -u nobody -- "$IMGDEDUP" info "$U" ok.img >/dev/null || fail "readable image indexed"
fi

# an image modified while it is read is reported, never indexed half-old
head -c $((256 << 20)) /dev/urandom > "$R/busy.raw"
( while [ ! -e "$WORK/stop" ]; do
    printf 'w' | dd of="$R/busy.raw" bs=1 seek=$((RANDOM * 4096)) conv=notrunc 2>/dev/null
  done ) & writer=$!
sleep 0.2
set +e
"$IMGDEDUP" scan -q --jobs 1 "$R" 2>"$WORK/err"; rc=$?
set -e
touch "$WORK/stop"; wait $writer
check "modified while read: exit 1" [ $rc = 1 ]
grep -q "busy.raw: modified while being read" "$WORK/err" || fail "message: $(cat "$WORK/err")"
if "$IMGDEDUP" info "$R" busy.raw >/dev/null 2>&1; then fail "a changing image was indexed"; fi
"$IMGDEDUP" scan -q "$R" || fail "once quiet, the image is indexed"
"$IMGDEDUP" info --blocks "$R" busy.raw > "$WORK/got"
python3 "$TESTS_DIR/blockhash.py" "$R/busy.raw" > "$WORK/want"
check "then its digests are right" cmp -s "$WORK/got" "$WORK/want"
rm "$R/busy.raw"

# a qcow2 overlay is re-read when its backing file changes (the backing
# chain is part of its identity), and its digests follow the new content
if command -v qemu-img >/dev/null; then
  Q=$WORK/qrepo; mkdir -p "$Q"
  head -c 3000000 /dev/urandom > "$WORK/base.raw"
  qemu-img convert -q -f raw -O qcow2 "$WORK/base.raw" "$Q/base.qcow2"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$Q/top.qcow2"
  qemu-io -c 'write -P 0x55 0 8k' "$Q/top.qcow2" >/dev/null
  "$IMGDEDUP" scan -q "$Q"
  qemu-io -c 'write -P 0x77 1M 8k' "$Q/base.qcow2" >/dev/null
  "$IMGDEDUP" scan -q --json "$Q" > "$WORK/q.json"
  check "backing file changed: overlay re-read too" [ "$(json_get "$WORK/q.json" scanned)" = 2 ]
  qemu-img convert -q -O raw "$Q/top.qcow2" "$WORK/top.raw"
  "$IMGDEDUP" info --blocks "$Q" top.qcow2 > "$WORK/got"
  python3 "$TESTS_DIR/blockhash.py" "$WORK/top.raw" > "$WORK/want"
  check "overlay digests follow the new backing content" cmp -s "$WORK/got" "$WORK/want"
fi

# a damaged index file: verify names it and exits 1
blk=$(ls "$R/.imgdedup/blocks" | head -n 1)
printf 'X' | dd of="$R/.imgdedup/blocks/$blk" bs=1 seek=40 conv=notrunc 2>/dev/null
set +e
"$IMGDEDUP" verify "$R" 2>"$WORK/err"; rc=$?
set -e
check "verify: exit 1 on a damaged file" [ $rc = 1 ]
grep -q "$blk" "$WORK/err" || fail "verify names the damaged file: $(cat "$WORK/err")"
echo "all scan checks passed"
