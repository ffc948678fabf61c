#!/usr/bin/env bash
# Self-test of the guest harness (guest.sh): a real Linux guest boots from
# (a) a local raw disk, (b) an nbdkit export of it over a unix socket, with
# nbdkit's log filter recording which blocks the guest read, and (c) a qcow2
# overlay backed by that export, into which the guest writes.  The exported
# disk must come out unchanged.  Needs no imgdedup (IMGDEDUP=/bin/true works):
# `imgdedup serve` tests reuse these steps with their own export.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/guest.sh"
for c in qemu-system-x86_64 qemu-img nbdkit nbdinfo; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
guest_prepare
echo "guest kernel $GUEST_KVER"
DISK=$WORK/disk.raw
guest_make_disk "$DISK" 64
sha_before=$(sha256sum < "$DISK")
expect_guest() {   # expect_guest WHAT MODE: the guest read every file right
  check "$1: guest mounted $2" test "$(guest_field mode)" = "$2"
  check "$1: guest saw $GUEST_DISK_FILES files" test "$(guest_field files)" = "$GUEST_DISK_FILES"
  check "$1: guest's file digest is the tree's" test "$(guest_field digest)" = "$GUEST_DISK_DIGEST"
}

# (a) local raw file
guest_boot "file=$DISK,format=raw,if=virtio,readonly=on" "$WORK/a.log" || fail "(a) boot from raw file"
expect_guest "(a) raw file" ro

# (b) nbdkit file export, read-only; --exit-with-parent so nothing outlives us
SOCK=$WORK/nbd.sock NBDLOG=$WORK/nbd.log
nbdkit -r -f --exit-with-parent -U "$SOCK" -P "$WORK/nbd.pid" \
  --filter=log file "$DISK" logfile="$NBDLOG" &
NBDKIT_PID=$!
stop_nbdkit() { kill "$NBDKIT_PID" 2>/dev/null; wait "$NBDKIT_PID" 2>/dev/null || true; }
cleanup_fns+=(stop_nbdkit)
for _ in $(seq 100); do [ -s "$WORK/nbd.pid" ] && break; sleep 0.1; done   # -P: written once ready
check "nbdkit serves the disk" test "$(nbdinfo --size "nbd+unix:///?socket=$SOCK")" = $((64 << 20))
: > "$NBDLOG"   # forget nbdinfo's connection
guest_boot "file=nbd:unix:$SOCK:exportname=disk,format=raw,if=virtio,readonly=on" "$WORK/b.log" \
  || fail "(b) boot from NBD"
expect_guest "(b) nbd" ro
# which 4 KiB blocks the guest read: what an on-demand server has to fetch
python3 "$TESTS_DIR/nbdlog_blocks.py" "$NBDLOG" 4096 > "$WORK/b.blocks"
read_blocks=$(wc -l < "$WORK/b.blocks")
echo "(b) guest read $read_blocks of $((64 << 8)) blocks: $(python3 "$TESTS_DIR/nbdlog_blocks.py" "$NBDLOG" 4096 --summary)"
check "(b) guest read block 0 (partition table)" test "$(head -n 1 "$WORK/b.blocks")" = 0
check "(b) guest reads cover the tree's bytes" test $((read_blocks * 4096)) -ge "$GUEST_DISK_BYTES"
check "(b) guest read less than the whole disk" test "$read_blocks" -lt $((64 << 8))

# (c) writable qcow2 overlay whose backing file is the export
qemu-img create -q -f qcow2 -b "nbd+unix:///disk?socket=$SOCK" -F raw "$WORK/overlay.qcow2"
guest_boot "file=$WORK/overlay.qcow2,format=qcow2,if=virtio" "$WORK/c.log" || fail "(c) boot from overlay"
expect_guest "(c) overlay" rw
wrote=$(guest_field wrote)
check "(c) guest reported a write" test -n "$wrote"
# the overlay (over the still-running export) holds a clean fs with that file
qemu-img convert -O raw "$WORK/overlay.qcow2" "$WORK/after.raw"
fsck_quiet() { e2fsck -fn "$1" >/dev/null 2>&1; }   # e2fsprogs' "?offset=": the partition
check "(c) filesystem in the overlay is clean" fsck_quiet "$WORK/after.raw?offset=1048576"
got=$(debugfs -R 'cat /imgdedup-guest-write' "$WORK/after.raw?offset=1048576" 2>/dev/null | md5sum | cut -d' ' -f1)
check "(c) the guest's file is in the overlay" test "$got" = "$wrote"

check "exported disk unchanged" test "$(sha256sum < "$DISK")" = "$sha_before"
check "no write reached the export" test "$(grep -c -E 'connection=[0-9]+ (Write|Trim|Zero) ' "$NBDLOG")" = 0
check "nbdkit still running" kill -0 "$NBDKIT_PID"
echo "boot times (s to marker): raw $(sed -n 's/^host: marker after //p' "$WORK/a.log")," \
  "nbd $(sed -n 's/^host: marker after //p' "$WORK/b.log"), overlay $(sed -n 's/^host: marker after //p' "$WORK/c.log")"
