#!/usr/bin/env bash
# Ten readers start the same uncached image at the same moment on one
# service (serve --all over nginx): the ten connections open the export
# together, then read it together, all in the same order (python3-libnbd,
# behind a barrier).  Every reader gets the image byte-exact and none fails;
# each block is fetched once: nginx sent no byte of the image twice, the
# image's block map was fetched once, and serve cached each distinct block
# once.  A second round of ten readers of another image, in ten different
# orders, checks the same with the readers scattered over the image.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
PY=/usr/bin/python3
for c in nbdkit nbdinfo; do command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"; done
$PY -c 'import nbd' || fail "python3-libnbd missing (scripts/install-deps)"
REPO=$WORK/repo
mkdir -p "$REPO"
BS=4096
for seed in 1 2; do
  $PY - "$REPO/vm$seed.raw" $seed <<'EOF'
import random, sys
r = random.Random(int(sys.argv[2]))
rep = [r.randbytes(4096) for _ in range(8)]
out = bytearray()
for b in range(1024):   # 4 MiB: random blocks, repeated blocks, zeros
    k = r.randrange(10)
    out += bytes(4096) if k == 0 else rep[k % 8] if k < 3 else r.randbytes(4096)
open(sys.argv[1], "wb").write(out)
EOF
done
age_files "$REPO"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$REPO"
serve_start s --all --from "$NGINX_URL" --cache "$WORK/cache"
check "the exports are not opened before a client asks" test "$(grep -c "^GET /\.imgdedup/maps/" "$NGINX_LOG")" = 0

# ten readers of IMAGE at once; ORDER same: all in one order, else each its own
readers() {   # IMAGE ORDER
  $PY - "$SERVE_SOCK" "$REPO/$1" "$1" "$2" <<'EOF'
import hashlib, nbd, random, sys, threading
sock, path, name, order = sys.argv[1:]
want = open(path, "rb").read()
go = threading.Barrier(10)
res = [None] * 10
def reader(n):
    try:
        h = nbd.NBD()
        h.set_export_name(name)
        go.wait()                     # the ten connect at once: first use of the export
        h.connect_unix(sock)
        size = h.get_size()
        chunks = list(range(0, size, 65536))
        if order != "same":
            random.Random(n).shuffle(chunks)
        go.wait()                     # and read at once
        got = {o: h.pread(min(65536, size - o), o) for o in chunks}
        h.shutdown()
        res[n] = b"".join(got[o] for o in sorted(got)) == want
    except Exception as e:
        res[n] = repr(e)
ts = [threading.Thread(target=reader, args=(n,)) for n in range(10)]
for t in ts: t.start()
for t in ts: t.join()
print("readers:", res)
sys.exit(0 if all(r is True for r in res) else 1)
EOF
}
# no byte of FILE sent twice by nginx; bytes sent of it
overlaps() {
  awk -v u="/$1" '$1 == "GET" && $2 == u {print $5}' "$NGINX_LOG" | $PY -c '
import re, sys
rs = sorted(tuple(map(int, m.groups())) for m in (re.search(r"bytes=(\d+)-(\d+)", l) for l in sys.stdin) if m)
print(sum(1 for a, b in zip(rs, rs[1:]) if b[0] <= a[1]))'
}
file_gets() { awk -v u="/$1" '$1 == "GET" && $2 == u' "$NGINX_LOG" | wc -l; }
map_gets() { grep -c '^GET /\.imgdedup/maps/' "$NGINX_LOG" || true; }
distinct() {
  $PY - "$TESTS_DIR" "$REPO/$1" $BS <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
print(len({d for d in blocks(sys.argv[2], int(sys.argv[3])) if d != ZERO}))
EOF
}

readers vm1.raw same || fail "ten readers of vm1.raw, same order"
echo "ok: ten readers starting vm1.raw at once read it exact"
check "vm1.raw: no byte fetched twice" test "$(overlaps vm1.raw)" = 0
check "vm1.raw: fetched at all" test "$(file_gets vm1.raw)" -gt 0
check "vm1.raw: its block map fetched once" test "$(map_gets)" = 1
nginx_log_reset
readers vm2.raw scattered || fail "ten readers of vm2.raw, scattered"
echo "ok: ten readers starting vm2.raw at once, each in its own order, read it exact"
check "vm2.raw: no byte fetched twice" test "$(overlaps vm2.raw)" = 0
check "vm2.raw: its block map fetched once" test "$(map_gets)" = 1
serve_stop s
check "no read failed" test "$(serve_stat s read_errors)" = 0
want=$(( $(distinct vm1.raw) + $(distinct vm2.raw) ))
check "each distinct block cached once ($want)" test "$(serve_stat s blocks_filled)" = "$want"
echo "fetched $(serve_stat s bytes_fetched) bytes in $(serve_stat s requests) requests for $want blocks"
