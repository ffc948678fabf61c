#!/usr/bin/env bash
# imgdedup serve from a local source: the NBD export of raw, qcow2 (plain
# and compressed), a VMDK in an OVA and a tar member reads byte for byte
# like the source, cold and fully cached, with real clients (nbdcopy,
# qemu-img compare, nbdinfo --map).  The --json counters are checked against
# an independent count (blockhash.py over the raw image): a full read
# caches each distinct block once and zero blocks never, and once cached
# nothing is fetched and every non-zero byte comes from the cache.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/serve.sh"
need_commands nbdkit nbdcopy nbdinfo qemu-img
serve_corpus
for id in base.raw plain.qcow2 comp.qcow2 vm.ova/disk1.vmdk plain.tar/disk.raw; do
  serve_cold_then_warm local "$id"
done
echo "PASS test_serve_local"
