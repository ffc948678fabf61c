#!/usr/bin/env bash
# serve --all: every image of SOURCE's catalog is an export, looked up when a
# client connects:
#  - nbdinfo --list lists exactly the catalog's ids;
#  - 10 images x 5 connections = 50 connections open at once, read in
#    parallel (python3-libnbd), each byte-exact against its source image;
#  - a name that is not an id of the catalog is refused with ENOENT whatever
#    its form (empty, "..", absolute, a file of SOURCE that is no image, the
#    index's own catalog, 4000 bytes long);
#  - over HTTP the catalog is fetched again only when it changed (HEAD and
#    ETag), and an image published (scan + map) after start is listed and
#    read exact without a restart;
#  - an image removed from the catalog is refused to new clients while a
#    connection opened before keeps reading it;
#  - a local SOURCE: a publish is seen through the catalog's inode/mtime with
#    --refresh 0, and not before the interval with --refresh 3600;
#  - --metrics counts the reads of each export opened on demand;
#  - the same service as `nbdkit imgdedup all=true`.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
PY=/usr/bin/python3
for c in nbdkit nbdinfo nbdcopy; do command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"; done
$PY -c 'import nbd' || fail "python3-libnbd missing (scripts/install-deps)"
REPO=$WORK/repo
mkdir -p "$REPO/os"
# 10 images of 256 KiB to 1 MiB: random blocks, a block shared by all, zeros
mkimg() {   # PATH SEED
  $PY - "$1" "$2" <<'EOF'
import random, sys
r = random.Random(int(sys.argv[2]))
n = 64 + 24 * int(sys.argv[2])
shared = random.Random(0).randbytes(4096)
out = bytearray()
for b in range(n):
    k = r.randrange(8)
    out += bytes(4096) if k == 0 else shared if k == 1 else r.randbytes(4096)
open(sys.argv[1], "wb").write(out[:len(out) - 1000])
EOF
}
for i in $(seq 1 10); do mkimg "$REPO/os/img$i.raw" "$i"; done
age_files "$REPO"
publish() { age_files "$REPO"; "$IMGDEDUP" scan -q "$REPO"; "$IMGDEDUP" map -q "$REPO"; }
publish
echo "not an image" > "$REPO/notes.txt"
ids() { (cd "$REPO" && find os -name '*.raw' | LC_ALL=C sort | tr '\n' ' '); }
listed() {   # URI: the export names nbdinfo --list prints, sorted
  nbdinfo --list --json "$1" | $PY -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(sys.stdin)["exports"])) + " ")'
}

nginx_start "$REPO"
MPORT=$(nginx_free_port)
serve_start h --all --refresh 0 --from "$NGINX_URL" --cache "$WORK/cache" --metrics "127.0.0.1:$MPORT"
LIST="nbd+unix:///?socket=$SERVE_SOCK"
check "nbdinfo --list lists the catalog's 10 ids" test "$(listed "$LIST")" = "$(ids)"

# 50 connections at once: all opened, then all read in parallel
$PY - "$SERVE_SOCK" "$REPO" $(ids) <<'EOF' || fail "50 concurrent readers"
import hashlib, nbd, random, sys, threading
sock, repo, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
conns = []
for k in range(5):
    for i in ids:
        h = nbd.NBD()
        h.set_export_name(i)
        h.connect_unix(sock)
        conns.append((i, h))
start = threading.Barrier(len(conns))
bad = []
def read(n, i, h):
    size = h.get_size()
    chunks = list(range(0, size, 65536))
    random.Random(n).shuffle(chunks)   # each connection in its own order
    start.wait()
    parts = {o: h.pread(min(65536, size - o), o) for o in chunks}
    got = hashlib.sha256(b"".join(parts[o] for o in sorted(parts))).hexdigest()
    if got != hashlib.sha256(open(f"{repo}/{i}", "rb").read()).hexdigest():
        bad.append(i)
ts = [threading.Thread(target=read, args=(n, i, h)) for n, (i, h) in enumerate(conns)]
for t in ts: t.start()
for t in ts: t.join()
for _, h in conns: h.shutdown()
print(f"{len(conns)} connections read, {len(bad)} wrong")
sys.exit(1 if bad or len(conns) != 50 else 0)
EOF
echo "ok: 50 concurrent connections (10 images x 5) read byte-exact"
curl -sf "http://127.0.0.1:$MPORT/metrics" > "$WORK/metrics.txt"
per_export() { grep -c '^imgdedup_export_reads_total{export="os/img[0-9]*\.raw"} [1-9]' "$WORK/metrics.txt"; }
check "--metrics: reads counted for each of the 10 exports opened on demand" test "$(per_export)" = 10

# names that are no id of the catalog: ENOENT, whatever they look like
long=$(head -c 4000 /dev/zero | tr '\0' a)
$PY - "$SERVE_SOCK" "" ".." "../repo/os/img1.raw" "/etc/passwd" "$REPO/os/img1.raw" "./os/img1.raw" \
  "os//img1.raw" "os/img1.raw/" "os" "notes.txt" ".imgdedup/catalog" "os/img1.raw%00" "$long" <<'EOF' \
  || fail "names outside the catalog refused with ENOENT"
import errno, nbd, sys
for name in sys.argv[2:]:
    h = nbd.NBD()
    h.set_export_name(name)
    try:
        h.connect_unix(sys.argv[1])
        sys.exit(f"export {name[:60]!r} opened")
    except nbd.Error as e:
        if e.errnum != errno.ENOENT:
            sys.exit(f"export {name[:60]!r}: {e} (errno {e.errnum}, not ENOENT)")
print(f"{len(sys.argv) - 2} names refused with ENOENT")
EOF
echo "ok: names outside the catalog refused with ENOENT"

# the catalog over HTTP: HEAD at each lookup, GET only when it changed
cat_gets() { awk '$1 == "GET" && $2 == "/.imgdedup/catalog"' "$NGINX_LOG" | wc -l; }
cat_heads() { awk '$1 == "HEAD" && $2 == "/.imgdedup/catalog"' "$NGINX_LOG" | wc -l; }
g0=$(cat_gets)
for _ in 1 2 3; do listed "$LIST" >/dev/null; done
check "an unchanged catalog is not fetched again (HEAD only)" test "$(cat_gets)" = "$g0"
check "the catalog's ETag was checked at each listing" test "$(cat_heads)" -ge 3

# published after start: listed and read, no restart
mkimg "$REPO/os/new.raw" 11
publish
check "an image published after start is listed" test "$(listed "$LIST")" = "$(ids)"
check "the changed catalog was fetched once more" test "$(cat_gets)" = "$((g0 + 1))"
nbdcopy "$(serve_uri h os/new.raw)" "$WORK/new.out"
check "the image published after start reads exact" cmp "$WORK/new.out" "$REPO/os/new.raw"

# removed from the catalog: new clients are refused, an open connection reads on
$PY - "$SERVE_SOCK" "$REPO" "$IMGDEDUP" <<'EOF' || fail "removed image"
import errno, hashlib, nbd, os, subprocess, sys
sock, repo, exe = sys.argv[1:]
want = open(f"{repo}/os/img3.raw", "rb").read()
h = nbd.NBD()
h.set_export_name("os/img3.raw")
h.connect_unix(sock)
assert h.pread(len(want), 0) == want, "first read"
os.rename(f"{repo}/os/img3.raw", f"{repo}/img3.moved")
for cmd in ("scan", "map"):
    subprocess.run([exe, cmd, "-q", repo], check=True)
h2 = nbd.NBD()
h2.set_export_name("os/img3.raw")
try:
    h2.connect_unix(sock)
    sys.exit("a removed image was opened by a new client")
except nbd.Error as e:
    assert e.errnum == errno.ENOENT, e
assert h.pread(len(want), 0) == want, "the open connection after removal"
h.shutdown()
EOF
echo "ok: a removed image: refused to new clients, the open connection reads on"
check "the removed image is no longer listed" test "$(listed "$LIST")" = "$(ids)"
serve_stop h
check "no read failed" test "$(serve_stat h read_errors)" = 0
nginx_stop

# a local SOURCE: the catalog's inode and mtime say it changed
serve_start l --all --refresh 0 --from "$REPO" --cache "$WORK/cache"
serve_start n --all --refresh 3600 --from "$REPO" --cache "$WORK/cache"
before=$(listed "nbd+unix:///?socket=$WORK/n.sock")
mkimg "$REPO/os/later.raw" 12
publish
check "local SOURCE, --refresh 0: a publish is listed" \
  test "$(listed "nbd+unix:///?socket=$WORK/l.sock")" = "$(ids)"
check "local SOURCE, --refresh 3600: not re-read before the interval" \
  test "$(listed "nbd+unix:///?socket=$WORK/n.sock")" = "$before"
nbdcopy "$(serve_uri l os/later.raw)" "$WORK/later.out"
check "local SOURCE: the published image reads exact" cmp "$WORK/later.out" "$REPO/os/later.raw"
serve_stop l
serve_stop n

# the same service as nbdkit with the plugin
PLUGIN=$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so
nbdkit -r -f --exit-with-parent -U "$WORK/k.sock" -P "$WORK/k.pid" "$PLUGIN" \
  from="$REPO" cache="$WORK/cache" all=true 2> "$WORK/k.err" &
KPID=$!
stop_k() { kill "$KPID" 2>/dev/null; wait "$KPID" 2>/dev/null || true; }
cleanup_fns+=(stop_k)
for _ in $(seq 100); do [ -s "$WORK/k.pid" ] && break; sleep 0.1; done
check "nbdkit imgdedup all=true lists the catalog" test "$(listed "nbd+unix:///?socket=$WORK/k.sock")" = "$(ids)"
nbdcopy "nbd+unix:///os/img7.raw?socket=$WORK/k.sock" "$WORK/k7.out"
check "nbdkit imgdedup all=true reads an image exact" cmp "$WORK/k7.out" "$REPO/os/img7.raw"
stop_k
check "--all with an IMAGE is a usage error" bash -c \
  '"$1" serve --all --from "$2" --cache "$3" --socket "$3/x.sock" os/img1.raw 2>/dev/null; test $? = 2' \
  _ "$IMGDEDUP" "$REPO" "$WORK"
echo "all serve --all checks passed"
