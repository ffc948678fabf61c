# cachecorpus.sh - the repository the node-cache scripts read, served by
# nginx; sourced after lib.sh, nginx.sh and serve.sh.
#   cache_corpus       the shared fixture (read-only), indexed, served at
#                      $NGINX_URL; sets REPO, BS, QREF, LONGID
#   cache_corpus_own   the same repository built in $WORK/repo, for a
#                      script that changes its images
# The images: a.raw (an 8 MiB ext4 of real files), b.raw and c.raw (copies
# of a.raw), rep.raw (40 patterns repeated over 300 blocks, zero blocks and
# a tail), base.qcow2 (rep.raw as qcow2; QREF its virtual disk as raw) and
# base.qcow2.raw (ids that older versions cached under one name), and
# LONGID, an id too long for a file name once escaped (271 characters).
#   cached C ID        the image of ID as cache C holds it once complete
#   wait_complete C ID until the image is complete (renamed into place, its
#                      journal gone), for at most SERVE_WAIT tenths of a second
#   flip_bytes FILE N S  flip N bytes of FILE at random offsets inside its data (seed S)
: "${SERVE_WAIT:=600}"
BS=4096
LONGDIR=$(printf 'd%.0s' $(seq 200))
LONGID=$LONGDIR/$(printf 'x%.0s' $(seq 66)).raw

_cache_corpus_build() {
  local repo=$1/repo t=$1/t
  mkdir -p "$repo" "$t/fs"
  cp -r /usr/share/common-licenses "$t/fs/lic"
  python3 -c 'import random,sys; r=random.Random(21); open(sys.argv[1],"wb").write(r.randbytes(2000000))' "$t/fs/rnd.bin"
  mkext4 "$repo/a.raw" 8 "$t/fs"
  cp "$repo/a.raw" "$repo/b.raw"
  cp "$repo/a.raw" "$repo/c.raw"
  python3 - "$repo/rep.raw" <<'PY'
import random, sys
r = random.Random(24)
pat = [r.randbytes(4096) for _ in range(40)]
out = bytearray()
for i in range(300):
    out += bytes(4096) if i % 7 == 0 else pat[i % 40]
out += b"tail" * 100
open(sys.argv[1], "wb").write(out)
PY
  qemu-img convert -f raw -O qcow2 "$repo/rep.raw" "$repo/base.qcow2"
  qemu-img convert -f qcow2 -O raw "$repo/base.qcow2" "$1/base.qcow2.ref"
  cp "$repo/c.raw" "$repo/base.qcow2.raw"
  mkdir -p "$repo/$LONGDIR"
  cp "$repo/rep.raw" "$repo/$LONGID"
  [ ${#LONGID} = 271 ] || fail "the long id has ${#LONGID} characters"
  rm -rf "$t"
  age_files "$repo"
  "$IMGDEDUP" scan -q "$repo"
  "$IMGDEDUP" map -q "$repo"
}
_cache_corpus_serve() {
  REPO=$1/repo QREF=$1/base.qcow2.ref
  nginx_start "$REPO"
}
cache_corpus() {
  fixture cache-corpus _cache_corpus_build
  _cache_corpus_serve "$FIXTURE"
}
cache_corpus_own() {
  _cache_corpus_build "$WORK"
  _cache_corpus_serve "$WORK"
}

cached() { echo "$1/images/$2"; }
wait_complete() {
  local i
  for i in $(seq "$SERVE_WAIT"); do
    [ -e "$1/images/$2" ] && [ ! -e "$1/images/$2.present" ] && return 0
    sleep 0.1
  done
  fail "$2 in $1 never became complete: $(cat "$WORK"/*.err 2>/dev/null | tail -n 5)"
}
flip_bytes() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
# offsets inside data regions (a partial image is sparse)
regions, off = [], 0
while off < size:
    try:
        ds = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    de = os.lseek(fd, ds, os.SEEK_HOLE)
    regions.append((ds, de))
    off = de
assert regions, "no data in " + path
for _ in range(n):
    a, b = r.choice(regions)
    at = r.randrange(a, b)
    c = os.pread(fd, 1, at)
    os.pwrite(fd, bytes([c[0] ^ 0x5a]), at)
os.close(fd)
PY
}
