#!/usr/bin/env bash
# serve restarted under a running guest (docs/serve.md, "Restarting serve
# under running guests"): a real VM (guest.sh, TCG) whose disk is qemu's NBD
# client on serve's socket with reconnect-delay reads the whole disk and
# every file, again and again (imgdedup.passes), while serve is
#   1. killed with SIGKILL, serve and its nbdkit, and started again;
#   2. stopped with SIGTERM and started again;
#   3. killed with SIGKILL, serve alone (nbdkit follows it: --exit-with-parent),
#      and started again;
# each on the same socket, each as a pass begins.  The guest finishes every
# pass with the data of the first, no I/O error on its console, and each
# restarted serve answered some of its reads.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/serve.sh"
for c in qemu-system-x86_64 nbdkit nbdinfo; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
guest_prepare
REPO=$WORK/repo
mkdir -p "$REPO"
guest_make_disk "$REPO/disk.raw" 64
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
DISK_MD5=$(md5sum < "$REPO/disk.raw" | cut -d' ' -f1)
SOCK=$WORK/serve.sock
export SERVE_SOCKET=$SOCK
serve_start s1 --from "$REPO" --cache "$WORK/cache" disk.raw

# qemu's NBD client: while the server is away, requests wait up to
# reconnect-delay seconds for it to come back (0, the default, fails them at
# once); open-timeout lets the first connection wait for a server that is
# still starting.  Generous here: the machine may be busy.
RD=120
GUEST_TIMEOUT=400 GUEST_APPEND="imgdedup.passes=4" guest_boot_start "" "$WORK/boot.log" \
  -blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$SOCK,export=disk.raw,read-only=on,reconnect-delay=$RD,open-timeout=$RD" \
  -device virtio-blk-pci,drive=disk0

wait_pass() {
  guest_wait_line "imgdedup-guest: pass $1 start" ||
    { tail -n 25 "$WORK/boot.log" | sed 's/^/    /' >&2; fail "the guest never began pass $1"; }
}

# 1. SIGKILL to nbdkit and serve: the socket file stays, nobody listens
wait_pass 1
serve_kill9 s1
check "after kill -9 the socket file is still there" test -S "$SOCK"
serve_start s2 --from "$REPO" --cache "$WORK/cache" disk.raw
echo "restarted after kill -9 at $(_guest_secs "$GUEST_T0") s"

# 2. SIGTERM: serve stops (exit 0, its counters), removes its socket
wait_pass 2
serve_stop s2
check "the serve started after the kill -9 answered reads" test "$(serve_stat s2 reads)" -gt 0
check "it had no read errors" test "$(serve_stat s2 read_errors)" = 0
serve_start s3 --from "$REPO" --cache "$WORK/cache" disk.raw
echo "restarted after SIGTERM at $(_guest_secs "$GUEST_T0") s"

# 3. SIGKILL to serve alone: its nbdkit gets SIGTERM from the kernel
#    (--exit-with-parent) and stops on its own
wait_pass 3
s3pid=$(cat "$WORK/s3.pid")
nbdkit_pid=$(pgrep -P "$s3pid" nbdkit)
kill -KILL "$s3pid"; wait "$s3pid" 2>/dev/null || true
serve_start s4 --from "$REPO" --cache "$WORK/cache" disk.raw
for _ in $(seq 600); do kill -0 "$nbdkit_pid" 2>/dev/null || break; sleep 0.1; done
check "the old nbdkit is gone" bash -c "! kill -0 $nbdkit_pid 2>/dev/null"
echo "restarted after kill -9 of serve alone at $(_guest_secs "$GUEST_T0") s"

guest_boot_wait || fail "the guest did not finish its passes"
check "guest saw $GUEST_DISK_FILES files" test "$(guest_field files)" = "$GUEST_DISK_FILES"
check "guest's file digest is the tree's" test "$(guest_field digest)" = "$GUEST_DISK_DIGEST"
check "guest did every pass" test "$(guest_field passes)" = 4
check "guest read the whole disk as it is" test "$(guest_field disk)" = "$DISK_MD5"
check "no I/O error on the guest's console" \
  bash -c "! grep -a -i -E 'I/O error|EXT4-fs error|blk_update_request|critical medium' '$WORK/boot.log'"
check "qemu reported no error" bash -c "! grep -a -E '^qemu-system-x86_64: ' '$WORK/boot.log'"
serve_stop s4
check "the last serve answered reads" test "$(serve_stat s4 reads)" -gt 0
check "it had no read errors" test "$(serve_stat s4 read_errors)" = 0
echo "PASS test_serve_restart_guest (guest done after $GUEST_SECS s)"
