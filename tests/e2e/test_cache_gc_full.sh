#!/usr/bin/env bash
# cache gc on a cache whose filesystem is full (a small tmpfs of its own:
# mounting needs root, which CI has) deletes before it writes its index, and
# succeeds.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/cachecorpus.sh"
cleanup_fns+=(nginx_stop)
need_commands qemu-img
[ "$(id -u)" = 0 ] || skip_script "cache gc on a full filesystem: needs root to mount a small tmpfs (uid $(id -u))"
cache_corpus

# A filesystem of its own that the cache fills: a small tmpfs (mounting
# needs root, which CI has).
MNT=$WORK/full
mkdir -p "$MNT"
mount -t tmpfs -o size=16m tmpfs "$MNT" || fail "cannot mount a tmpfs on $MNT"
unmount_full() { umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
cleanup_fns=(unmount_full "${cleanup_fns[@]}")
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$MNT/cache" -q b.raw
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$MNT/cache" -q c.raw
# everything left taken: the filesystem is full
dd if=/dev/zero of="$MNT/filler" bs=4096 status=none 2>/dev/null || true
if dd if=/dev/zero of="$MNT/probe" bs=4096 count=1 status=none 2>/dev/null; then
  fail "the tmpfs is not full"
fi
rm -f "$MNT/probe"
"$IMGDEDUP" cache gc --max-size 0 --json "$MNT/cache" > "$WORK/gc3.json" 2> "$WORK/gc3.err" ||
  fail "cache gc on a full filesystem: $(cat "$WORK/gc3.err")"
check "full filesystem: gc removed both images" test "$(json_get "$WORK/gc3.json" images_removed)" = 2
check "full filesystem: the image files are gone" test ! -e "$MNT/cache/images/b.raw" -a ! -e "$MNT/cache/images/c.raw"
"$IMGDEDUP" cache ls --json "$MNT/cache" > "$WORK/ls3.json" 2> "$WORK/ls3.err"
check "full filesystem: the index lists nothing, without a warning" python3 - "$WORK/ls3.json" "$WORK/ls3.err" <<'PY'
import json, os, sys
sys.exit(not (json.load(open(sys.argv[1]))["images"] == [] and os.path.getsize(sys.argv[2]) == 0))
PY
rm -f "$MNT/filler"
unmount_full

echo "PASS test_cache_gc_full"
