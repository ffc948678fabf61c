#!/usr/bin/env bash
# A real VM boots from `imgdedup serve` (guest.sh: a Debian kernel, a busybox
# initramfs, TCG) with its disk image served over nginx:
#  - cold cache: the guest reads every file under /usr/sbin right, and serve fetched no more
#    than the distinct blocks the guest reads (measured on a plain
#    `nbdkit file` export of the same image through nbdkit's log filter)
#    plus what readahead may add past each of those reads;
#  - second boot on the same cache: nothing fetched;
#  - boot through a qcow2 overlay whose backing file is the export, the guest
#    writing a file: the write lands in the overlay, the export is unchanged.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in qemu-system-x86_64 qemu-img nbdkit nbdinfo nbdcopy; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
guest_prepare
REPO=$WORK/repo
mkdir -p "$REPO"
guest_make_disk "$REPO/disk.raw" 64
BS=4096
READAHEAD=$((256 << 10))   # serve's --readahead below
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
SHA=$(sha256sum < "$REPO/disk.raw")
nginx_start "$REPO"
expect_guest() {   # WHAT MODE [FILES DIGEST]: the guest read every file right
  local files=${3:-$GUEST_DISK_FILES} digest=${4:-$GUEST_DISK_DIGEST}
  check "$1: guest mounted $2" test "$(guest_field mode)" = "$2"
  check "$1: guest saw $files files" test "$(guest_field files)" = "$files"
  check "$1: guest's file digest is the tree's" test "$(guest_field digest)" = "$digest"
}
# The first boots read only /usr/sbin (part of the disk), so that what serve
# fetches can be told from the whole image; what the guest must report for
# it, computed from the host's files the disk was made of:
SUBDIR=usr/sbin
read -r SUB_FILES SUB_DIGEST < <(
  grep "^$SUBDIR/" "$WORK/guest-tree.list" | sed "s|^$SUBDIR/||" > "$WORK/sub.list"
  (cd "/$SUBDIR" && xargs -a "$WORK/sub.list" -d '\n' md5sum) | sed 's|^\([0-9a-f]*\)  |\1  ./|' > "$WORK/sub.sums"
  echo "$(wc -l < "$WORK/sub.sums") $(LC_ALL=C sort "$WORK/sub.sums" | md5sum | cut -d' ' -f1)")
[ "$SUB_FILES" -gt 20 ] || fail "too few files under /$SUBDIR in the guest disk: $SUB_FILES"

# What the guest reads: a plain nbdkit file export with the log filter.
nbdkit -r -f --exit-with-parent -U "$WORK/ref.sock" -P "$WORK/ref.pid" \
  --filter=log file "$REPO/disk.raw" logfile="$WORK/ref.log" &
REF_PID=$!
stop_ref() { kill "$REF_PID" 2>/dev/null; wait "$REF_PID" 2>/dev/null || true; }
cleanup_fns+=(stop_ref)
for _ in $(seq 100); do [ -s "$WORK/ref.pid" ] && break; sleep 0.1; done
GUEST_APPEND=imgdedup.dir=$SUBDIR guest_boot \
  "file=nbd:unix:$WORK/ref.sock:exportname=disk,format=raw,if=virtio,readonly=on" "$WORK/ref.boot" \
  || fail "reference boot from nbdkit file"
expect_guest "reference (nbdkit file)" ro "$SUB_FILES" "$SUB_DIGEST"
stop_ref
python3 "$TESTS_DIR/nbdlog_blocks.py" "$WORK/ref.log" $BS > "$WORK/ref.blocks"
# distinct non-zero contents among the blocks read, and the same with each
# read extended by the readahead window: the bound on what serve may fetch
read -r READ_DISTINCT BOUND_DISTINCT < <(python3 - "$TESTS_DIR" "$REPO/disk.raw" "$WORK/ref.log" $BS $READAHEAD <<'PY'
import re, sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
ds = blocks(sys.argv[2], int(sys.argv[4]))
bs, ra = int(sys.argv[4]), int(sys.argv[5])
req = re.compile(r" connection=\d+ Read id=\d+ offset=(0x[0-9a-fA-F]+|\d+) count=(0x[0-9a-fA-F]+|\d+)")
read, bound = set(), set()
for line in open(sys.argv[3], errors="replace"):
    m = req.search(line)
    if not m:
        continue
    off, n = int(m.group(1), 0), int(m.group(2), 0)
    read.update(range(off // bs, (off + n - 1) // bs + 1))
    bound.update(range(off // bs, min(len(ds), (off + n + ra - 1) // bs + 1)))
d = lambda s: len({ds[b] for b in s if ds[b] != ZERO})
print(d(read), d(bound))
PY
)
echo "the guest read $(wc -l < "$WORK/ref.blocks") blocks: $READ_DISTINCT distinct non-zero contents" \
  "($BOUND_DISTINCT with ${READAHEAD}-byte readahead after each read)"

# Cold cache.
nginx_log_reset
serve_start cold --from "$NGINX_URL" --cache "$WORK/cache" --readahead $READAHEAD disk.raw
GUEST_APPEND=imgdedup.dir=$SUBDIR guest_boot \
  "file=nbd:unix:$WORK/cold.sock:exportname=disk.raw,format=raw,if=virtio,readonly=on" "$WORK/cold.boot" \
  || fail "boot from imgdedup serve (cold cache)"
expect_guest "serve, cold cache" ro "$SUB_FILES" "$SUB_DIGEST"
serve_stop cold
fetched=$(serve_stat cold bytes_fetched)
check "cold: fetched = what nginx sent of the image" test "$fetched" = "$(awk '$2 == "/disk.raw" {s += $4} END {print s + 0}' "$NGINX_LOG")"
check "cold: fetched at least the distinct blocks the guest read" test "$fetched" -ge $((READ_DISTINCT * BS))
check "cold: fetched no more than those plus readahead ($((BOUND_DISTINCT * BS)))" test "$fetched" -le $((BOUND_DISTINCT * BS))
DATA_DISTINCT=$(python3 "$TESTS_DIR/blockhash.py" --summary $BS "$REPO/disk.raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_blocks"])')
check "cold: fetched less than the image's data ($((DATA_DISTINCT * BS)))" test "$fetched" -lt $((DATA_DISTINCT * BS))
echo "ok: cold boot in $GUEST_SECS s fetched $fetched bytes in $(serve_stat cold requests) requests;" \
  "the guest read $(serve_stat cold bytes_read) bytes ($(serve_stat cold bytes_zero) zero);" \
  "the image has $(stat -c %s "$REPO/disk.raw") bytes"

# Second boot, same cache.
nginx_log_reset
serve_start warm --from "$NGINX_URL" --cache "$WORK/cache" --readahead $READAHEAD disk.raw
GUEST_APPEND=imgdedup.dir=$SUBDIR guest_boot \
  "file=nbd+unix:///disk.raw?socket=$WORK/warm.sock,format=raw,if=virtio,readonly=on" "$WORK/warm.boot" \
  || fail "boot from imgdedup serve (warm cache)"
expect_guest "serve, second boot" ro "$SUB_FILES" "$SUB_DIGEST"
serve_stop warm
check "second boot: nothing fetched" test "$(serve_stat warm bytes_fetched)" = 0
check "second boot: nginx sent nothing of the image" test "$(awk '$2 == "/disk.raw"' "$NGINX_LOG" | wc -l)" = 0
echo "ok: second boot in $GUEST_SECS s, $(serve_stat warm bytes_from_cache) bytes from the cache"

# A writable overlay over the export (the guest reads everything: the rest
# is fetched now).
serve_start ovl --from "$NGINX_URL" --cache "$WORK/cache" disk.raw
qemu-img create -q -f qcow2 -b "nbd+unix:///disk.raw?socket=$WORK/ovl.sock" -F raw "$WORK/overlay.qcow2"
guest_boot "file=$WORK/overlay.qcow2,format=qcow2,if=virtio" "$WORK/ovl.boot" || fail "boot from the overlay"
expect_guest "overlay" rw
wrote=$(guest_field wrote)
check "overlay: the guest wrote a file" test -n "$wrote"
nbdcopy "nbd+unix:///disk.raw?socket=$WORK/ovl.sock" "$WORK/export-after.raw"
check "overlay: the export still reads as the original image" test "$(sha256sum < "$WORK/export-after.raw")" = "$SHA"
qemu-img convert -O raw "$WORK/overlay.qcow2" "$WORK/after.raw"
got=$(debugfs -R 'cat /imgdedup-guest-write' "$WORK/after.raw?offset=1048576" 2>/dev/null | md5sum | cut -d' ' -f1)
check "overlay: the guest's file is in the overlay" test "$got" = "$wrote"
serve_stop ovl
check "the source image is unchanged" test "$(sha256sum < "$REPO/disk.raw")" = "$SHA"
echo "PASS test_serve_vm"
