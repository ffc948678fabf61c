#!/usr/bin/env bash
# deploy of every stored form, from a repository served by nginx: plain,
# compressed and overlay qcow2 (the overlay's clusters smaller than its
# compressed backing's), a VMDK in an .ova, raw members of an uncompressed
# tar (one GNU-sparse) and of a .tar.gz (stored as ./disk.img), a Vagrant
# .box.  Each output is compared byte for byte with `qemu-img convert -O raw`
# of the source; the compressed qcow2 must be fetched in far fewer requests
# than it has clusters.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
cleanup_fns+=(nginx_stop)

REPO=$WORK/repo
T=$WORK/t
mkdir -p "$REPO" "$T/fs" "$T/box" "$T/ova" "$T/tgz"

# Content: an ext4 of real files (compressible, with holes) of 8 MiB.
cp -r /usr/share/common-licenses "$T/fs/lic"
python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(600000))' "$T/fs/rnd.bin"
# compressible and not repetitive: many compressed clusters
python3 - "$T/fs/words.txt" <<'PY'
import random, sys
r = random.Random(6)
words = ["%s%d" % (w, r.randrange(1000)) for w in ("alpha", "beta", "gamma", "delta") * 200]
open(sys.argv[1], "w").write(" ".join(r.choice(words) for _ in range(500000)))
PY
mkext4 "$T/base.raw" 12 "$T/fs"

qemu-img convert -f raw -O qcow2 "$T/base.raw" "$REPO/plain.qcow2"
qemu-img convert -f raw -O qcow2 -c "$T/base.raw" "$REPO/comp.qcow2"
# Overlay: 4 KiB clusters over a compressed backing with 64 KiB clusters;
# its own writes cut the backing's compressed clusters into pieces.
qemu-img convert -f raw -O qcow2 -c -o cluster_size=65536 "$T/base.raw" "$REPO/back.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b back.qcow2 -F qcow2 "$REPO/top.qcow2"
python3 - "$T/patch.raw" <<'PY'
import random, sys
r = random.Random(9)
open(sys.argv[1], "wb").write(r.randbytes(4096))
PY
for off in 8192 73728 139264 1052672 2101248; do
  qemu-io -f qcow2 -c "write -P 0x5a $off 4096" "$REPO/top.qcow2" >/dev/null
done
# an overlay in a subdirectory whose backing file is named '../top.qcow2':
# each level of a chain resolves next to the file naming it
mkdir -p "$REPO/sub"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b ../top.qcow2 -F qcow2 "$REPO/sub/deep.qcow2"
qemu-io -f qcow2 -c "write -P 0x6b 16384 4096" "$REPO/sub/deep.qcow2" >/dev/null
# VMDK (streamOptimized, compressed grains) in an OVA
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$T/base.raw" "$T/ova/disk1.vmdk"
printf '<?xml version="1.0"?><Envelope/>\n' > "$T/ova/vm.ovf"
tar cf "$REPO/vm.ova" -C "$T/ova" vm.ovf disk1.vmdk
# raw members of an uncompressed tar: one plain, one GNU-sparse (streamed)
cp "$T/base.raw" "$T/disk.raw"
cp --sparse=always "$T/base.raw" "$T/sparse.raw"
tar cf "$REPO/plain.tar" -C "$T" disk.raw
tar --format=gnu -S -cf "$REPO/sparse.tar" -C "$T" sparse.raw
# a raw member stored as ./disk.img in a .tar.gz (scan normalises the name)
cp "$T/base.raw" "$T/tgz/disk.img"
(cd "$T/tgz" && tar czf "$REPO/app.tar.gz" ./disk.img)
# a Vagrant box: qcow2 in a tar.gz
qemu-img convert -f raw -O qcow2 "$T/base.raw" "$T/box/box.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":1}\n' > "$T/box/metadata.json"
tar czf "$REPO/vm.box" -C "$T/box" metadata.json box.img

"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
"$IMGDEDUP" ls --json "$REPO" > "$WORK/ls.json"
python3 - "$WORK/ls.json" <<'PY' > "$WORK/ids"
import json, sys
d = json.load(open(sys.argv[1]))
imgs = d["images"] if isinstance(d, dict) else d
for i in imgs:
    print(i["id"])
PY
for id in plain.qcow2 comp.qcow2 top.qcow2 sub/deep.qcow2 vm.ova/disk1.vmdk plain.tar/disk.raw sparse.tar/sparse.raw \
          app.tar.gz/disk.img vm.box/box.img; do
  grep -qx "$id" "$WORK/ids" || fail "scan did not list $id (got: $(tr '\n' ' ' < "$WORK/ids"))"
done

nginx_start "$REPO"
URL=$NGINX_URL
# expected contents, from qemu-img (independent of imgdedup)
qemu-img convert -O raw "$REPO/plain.qcow2" "$WORK/want.base"
qemu-img convert -O raw "$REPO/top.qcow2" "$WORK/want.top"
qemu-img convert -O raw "$REPO/sub/deep.qcow2" "$WORK/want.deep"
cmp -s "$WORK/want.base" "$T/base.raw" || fail "qemu-img round trip differs"

deploy_one() { # ID WANT -> deploys with an empty cache into $WORK/out.N, compares
  local id=$1 want=$2 n=$3
  nginx_log_reset
  "$IMGDEDUP" deploy --from "$URL" --cache "$WORK/cache.$n" -o "$WORK/out.$n" --json -q "$id" \
    > "$WORK/d.$n.json" 2> "$WORK/d.$n.err" || fail "deploy $id: $(cat "$WORK/d.$n.err")"
  cmp "$WORK/out.$n" "$want" || fail "deploy $id: output differs from qemu-img's"
  REQS=$(nginx_requests)
  echo "ok: deploy $id byte-exact ($REQS requests, $(nginx_bytes) bytes)"
}

deploy_one plain.qcow2 "$WORK/want.base" 1
deploy_one comp.qcow2 "$WORK/want.base" 2
# the compressed qcow2 has one stored unit per 64 KiB cluster holding data
CLUSTERS=$(qemu-img map --output=json "$REPO/comp.qcow2" | python3 -c '
import json, sys
print(sum((e["length"] + 65535) // 65536 for e in json.load(sys.stdin) if e["data"]))')
[ "$CLUSTERS" -ge 60 ] || fail "test image too small: $CLUSTERS data clusters"
[ "$REQS" -le $((CLUSTERS / 5)) ] || fail "compressed qcow2: $REQS requests for $CLUSTERS clusters"
echo "ok: compressed qcow2 fetched in $REQS requests for $CLUSTERS data clusters"
deploy_one top.qcow2 "$WORK/want.top" 3
deploy_one vm.ova/disk1.vmdk "$WORK/want.base" 4
[ "$REQS" -le $((CLUSTERS / 5)) ] || fail "ova vmdk: $REQS requests"
deploy_one plain.tar/disk.raw "$WORK/want.base" 5
deploy_one sparse.tar/sparse.raw "$WORK/want.base" 6
deploy_one app.tar.gz/disk.img "$WORK/want.base" 7
deploy_one vm.box/box.img "$WORK/want.base" 8
deploy_one sub/deep.qcow2 "$WORK/want.deep" 9
echo "PASS test_deploy_formats"
