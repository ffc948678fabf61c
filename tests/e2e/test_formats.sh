#!/usr/bin/env bash
# Image formats end to end: a repository holding a raw image and its twins
# in other containers (plain and compressed qcow2 with zlib and zstd, a qcow2
# overlay over a base, a streamOptimized VMDK inside an OVA, a qcow2 inside a
# tar, a raw image inside a tar.gz and a Vagrant .box).  scan must give every
# twin exactly the digests python3 hashlib computes over `qemu-img convert
# -O raw` of it; malformed images are reported by name and the rest indexed.
source "$(dirname "$0")/lib.sh"
R=$WORK/repo T=$WORK/tmp
mkdir -p "$R/vm" "$T/trees" "$T/ova" "$T/box" "$T/tar"

find /usr/share/doc -type f -size -256k 2>/dev/null | sort | awk 'NR <= 250' > "$T/files"
xargs -d '\n' cp --parents -t "$T/trees" < "$T/files" 2>/dev/null || true
mkext4 "$R/disk.raw" 16 "$T/trees"
# an odd size (sectors, but not blocks or clusters: qemu-img rounds to sectors), random tail
python3 -c 'import random,sys; random.seed(5); sys.stdout.buffer.write(bytes(random.getrandbits(8) for _ in range(300032)))' >> "$R/disk.raw"

qemu-img convert -f raw -O qcow2 "$R/disk.raw" "$R/plain.qcow2"
qemu-img convert -f raw -O qcow2 -c "$R/disk.raw" "$R/zlib.qcow2"
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd,cluster_size=4096 "$R/disk.raw" "$R/vm/zstd.qcow2"
qemu-img convert -f raw -O qcow2 -o compat=0.10,cluster_size=512 "$R/disk.raw" "$R/v2.qcow2"
# an overlay whose own clusters change part of the base
qemu-img create -q -f qcow2 -b ../plain.qcow2 -F qcow2 "$R/vm/overlay.qcow2"
qemu-io -f qcow2 -c 'write -P 0x5a 1M 300k' -c 'write -z 4M 64k' "$R/vm/overlay.qcow2" > /dev/null
# an OVA: ovf, mf, then the streamOptimized VMDK
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$R/disk.raw" "$T/ova/disk1.vmdk"
echo '<Envelope/>' > "$T/ova/appliance.ovf"
(cd "$T/ova" && echo "SHA256(disk1.vmdk)= $(sha256sum disk1.vmdk | cut -d' ' -f1)" > appliance.mf &&
 tar --format=ustar -cf "$R/appliance.ova" appliance.ovf appliance.mf disk1.vmdk)
# a qcow2 inside a plain tar, a raw inside a tar.gz, a Vagrant box (tar.gz with a qcow2)
cp "$R/zlib.qcow2" "$T/tar/inner.qcow2"
(cd "$T/tar" && tar -cf "$R/bundle.tar" inner.qcow2)
cp "$R/disk.raw" "$T/tar/disk.img"
(cd "$T/tar" && tar -czf "$R/raw.tar.gz" disk.img)
cp "$R/plain.qcow2" "$T/box/box.img"
echo '{"provider":"libvirt"}' > "$T/box/metadata.json"; echo 'Vagrant.configure("2")' > "$T/box/Vagrantfile"
(cd "$T/box" && tar -czf "$R/vagrant.box" metadata.json Vagrantfile box.img)
# malformed: a truncated qcow2 header and a cyclic backing chain
head -c 60 "$R/plain.qcow2" > "$R/broken.qcow2"
qemu-img create -q -f qcow2 "$R/cyc-a.qcow2" 1M
qemu-img create -q -f qcow2 -b cyc-a.qcow2 -F qcow2 "$R/cyc-b.qcow2"
qemu-img rebase -u -f qcow2 -b cyc-b.qcow2 -F qcow2 "$R/cyc-a.qcow2"

age_files "$R" # the re-run below must find them unchanged
set +e
"$IMGDEDUP" scan --json -q "$R" > "$T/scan.json" 2> "$T/scan.err"
rc=$?
set -e
cat "$T/scan.json"; cat "$T/scan.err"
check "scan exits 1 with broken images present" [ "$rc" = 1 ]
check "truncated header named" grep -q 'broken.qcow2.*truncated qcow2 header' "$T/scan.err"
check "cyclic chain named" grep -q 'cyc-a.qcow2.*cycle' "$T/scan.err"

"$IMGDEDUP" ls "$R" > "$T/ls.txt"
cat "$T/ls.txt"

# Every twin's digests equal python's over qemu-img's raw conversion.
python3 "$TESTS_DIR/blockhash.py" "$R/disk.raw" 4096 > "$T/want-disk"
qemu-img convert -O raw "$R/vm/overlay.qcow2" "$T/overlay.raw"
python3 "$TESTS_DIR/blockhash.py" "$T/overlay.raw" 4096 > "$T/want-overlay"
for spec in disk.raw:raw plain.qcow2:qcow2 zlib.qcow2:qcow2 vm/zstd.qcow2:qcow2 v2.qcow2:qcow2 \
            appliance.ova/disk1.vmdk:vmdk bundle.tar/inner.qcow2:qcow2 raw.tar.gz/disk.img:raw \
            vagrant.box/box.img:qcow2; do
  id=${spec%:*} fmt=${spec##*:}
  "$IMGDEDUP" info --blocks "$R" "$id" > "$T/got"
  check "$id: every digest equals python's over the raw twin" cmp -s "$T/got" "$T/want-disk"
  "$IMGDEDUP" info --json "$R" "$id" > "$T/info.json"
  check "$id: format $fmt" [ "$(json_get "$T/info.json" format)" = "$fmt" ]
  check "$id: virtual size" [ "$(json_get "$T/info.json" size)" = "$(stat -c %s "$R/disk.raw")" ]
done
"$IMGDEDUP" info --blocks "$R" vm/overlay.qcow2 > "$T/got"
check "overlay: digests equal python's over qemu-img's conversion" cmp -s "$T/got" "$T/want-overlay"
check "ova listed with its container" grep -q 'appliance.ova/disk1.vmdk' "$T/ls.txt"
check "no ovf/mf/metadata entries" bash -c "! grep -Eq '\\.ovf|\\.mf|metadata.json|Vagrantfile' '$T/ls.txt'"

# A re-run reads nothing: archive members are unchanged too.  The broken
# images are still there, so it exits 1 again, naming them.
set +e
"$IMGDEDUP" scan --json -q "$R" > "$T/scan2.json" 2> "$T/scan2.err"
rc=$?
set -e
cat "$T/scan2.err"
check "re-run exits 1 with broken images present" [ "$rc" = 1 ]
check "re-run names the broken images" grep -q 'broken.qcow2' "$T/scan2.err"
check "re-run: bytes_hashed=0" [ "$(json_get "$T/scan2.json" bytes_hashed)" = 0 ]

# Every twin has jaccard exactly 1 with the raw image.
set +e
"$IMGDEDUP" similarity --format csv "$R" > "$T/sim.csv" 2> "$T/sim.err"
rc=$?
set -e
cat "$T/sim.err"
check "similarity exits 0" [ "$rc" = 0 ]
check "similarity of every twin with disk.raw is 1.000000" python3 - "$T/sim.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
assert rows and rows[0][0] == "image", rows[:1]
ids = rows[0][1:]
m = {r[0]: dict(zip(ids, r[1:])) for r in rows[1:]}
twins = ["plain.qcow2", "zlib.qcow2", "vm/zstd.qcow2", "v2.qcow2", "appliance.ova/disk1.vmdk",
         "bundle.tar/inner.qcow2", "raw.tar.gz/disk.img", "vagrant.box/box.img"]
bad = [(t, m.get("disk.raw", {}).get(t)) for t in twins
       if m.get("disk.raw", {}).get(t) != "1.000000" or m.get(t, {}).get("disk.raw") != "1.000000"]
if bad:
    sys.exit("not exactly 1.000000: %r" % bad)
over = float(m["disk.raw"]["vm/overlay.qcow2"])
if not 0 < over < 1:
    sys.exit("overlay vs disk.raw: %r, want strictly between 0 and 1" % over)
PY
echo "test_formats: all checks passed"
