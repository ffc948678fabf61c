#!/usr/bin/env bash
# make-seeds.sh GEN_SEEDS_BINARY - (re)writes the seed corpora under
# fuzz/corpus/<target>/ from small images made with qemu-img, tar, gzip,
# xz and zstd, plus a real catalog, block map and pack from GEN_SEEDS_BINARY.
# Every seed stays small (a few KiB, the VMDK ones ~70 KiB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gen=$1
c=$here/corpus
t=$(mktemp -d "${TMPDIR:-/tmp}/idd-seeds.XXXXXX")
trap 'rm -rf "$t"' EXIT
mkdir -p "$c"/{qcow2,vmdk,archive,index,map,pack}
cd "$t"
# 16 KiB disk: random, zeros, text.
python3 -c 'import random,sys
r=random.Random(1); d=bytes(r.getrandbits(8) for _ in range(4096))+bytes(4096)+b"seed text "*409+b"xx"+bytes(4096)
sys.stdout.buffer.write(d)' > d.raw
q() { qemu-img convert -f raw -O qcow2 "$@"; }
q -o cluster_size=512 d.raw "$c/qcow2/c512.qcow2"
q -c -o cluster_size=512 d.raw "$c/qcow2/c512-zlib.qcow2"
q -c -o cluster_size=512,compression_type=zstd d.raw "$c/qcow2/c512-zstd.qcow2"
q -o cluster_size=512,compat=0.10 d.raw "$c/qcow2/c512-v2.qcow2"
q -o cluster_size=4096 d.raw "$c/qcow2/c4k.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=512 -b c512.qcow2 -F qcow2 "$c/qcow2/overlay.qcow2"
qemu-io -f qcow2 -c 'write -z 0 512' -c 'write -P 7 1024 512' "$c/qcow2/overlay.qcow2" >/dev/null 2>&1 || true
qemu-img rebase -u -f qcow2 -b c512.qcow2 -F qcow2 "$c/qcow2/overlay.qcow2"
# VMDK: 64 KiB grains, so the smallest files are ~70 KiB.
head -c 8192 d.raw > v.raw
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized v.raw "$c/vmdk/stream.vmdk"
printf '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 16 FLAT "x-flat.vmdk" 0\n' > "$c/vmdk/descriptor.vmdk"
# Archives.
mkdir m && cp d.raw m/disk.img && echo '<Envelope/>' > m/a.ovf
long=m/$(printf 'x%.0s' $(seq 1 120)).img && cp d.raw "$long"
(cd m && tar --format=ustar -cf "$c/archive/ustar.tar" a.ovf disk.img)
(cd m && tar --format=gnu -cf "$c/archive/gnu-long.tar" x*.img)
(cd m && tar --format=pax -cf "$c/archive/pax-long.tar" x*.img)
(cd m && tar -czf "$c/archive/a.tar.gz" disk.img)
(cd m && tar --zstd -cf "$c/archive/a.tar.zst" disk.img)
(cd m && tar -cJf "$c/archive/a.tar.xz" disk.img)
cp "$c/qcow2/c512.qcow2" m/q.qcow2 && (cd m && tar --format=ustar -cf "$c/archive/qcow2-in.tar" q.qcow2)
"$gen" "$c/index" "$c/map" "$c/pack"
du -sh "$c"/* >&2
