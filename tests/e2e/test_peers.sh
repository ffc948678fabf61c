#!/usr/bin/env bash
# Peers end to end: nodes in a rack take blocks from each other's caches
# (served read-only by nginx, as docs/peers.md sets it up) before asking
# SOURCE.  A node deploying with --peer pulls from SOURCE exactly the
# distinct blocks no peer holds (an independent python count, and nginx's
# log), the rest from the peers (bytes_from_peers); a tampered peer file, a
# dead peer and a damaged peer index cost a warning and a fallback, never a
# wrong byte or a failed deploy.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
cleanup_fns+=(nginx_stop)

BS=4096
if ! "$IMGDEDUP" deploy --help 2>&1 | grep -q -- --peer; then
  fail "deploy has no --peer option (lib/node/source_peer.h is not wired into deploy yet)"
fi

# One nginx serves SOURCE (/repo) and the node caches (/node-a, ...): the
# access log tells what each side sent.
REPO=$WORK/repo
mkdir -p "$REPO/sub" "$WORK/t1" "$WORK/t2" "$WORK/t3"
cp -r /usr/share/common-licenses "$WORK/t1/lic"
cp -r /usr/share/common-licenses "$WORK/t2/lic"
cp -r /usr/share/common-licenses "$WORK/t3/lic"
python3 - "$WORK" <<'PY'
import random, sys
w = sys.argv[1]
r = random.Random(11)
a, b, c = r.randbytes(1500000), r.randbytes(1500000), r.randbytes(1000000)
open(w + "/t1/a.bin", "wb").write(a)   # v1: a
open(w + "/t2/b.bin", "wb").write(b)   # v2: b
open(w + "/t3/a.bin", "wb").write(a)   # w: a and b (from the peers) and c (only in SOURCE)
open(w + "/t3/b.bin", "wb").write(b)
open(w + "/t3/c.bin", "wb").write(c)
PY
mkext4 "$REPO/v1.raw" 12 "$WORK/t1"
mkext4 "$REPO/sub/v2.raw" 12 "$WORK/t2"   # cached as images/sub%2Fv2.raw: a name to escape in URLs
mkext4 "$REPO/w.raw" 12 "$WORK/t3"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$WORK"
SRC=$NGINX_URL/repo

# bytes nginx sent for data under a URL prefix (index files excluded)
sent() { awk -v p="$1" 'index($2, p) == 1 && $2 !~ /\/(index|\.imgdedup\/.*)$/ {s += $4} END {print s + 0}' "$NGINX_LOG"; }

# two nodes, each with one image in its cache
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-a" -q v1.raw
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-b" -q sub/v2.raw
PA=$NGINX_URL/node-a
PB=$NGINX_URL/node-b

# 1. a third node: what the peers hold comes from them, the rest from SOURCE
nginx_log_reset
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-c" --peer "$PA" --peer "$PB" --json -q \
  w.raw > "$WORK/c.json" 2> "$WORK/c.err"
check "w byte-exact" cmp "$REPO/w.raw" "$(json_get "$WORK/c.json" output)"
check "no warnings with healthy peers" [ ! -s "$WORK/c.err" ]
want_src=$(missing_bytes "$REPO/w.raw" "$REPO/v1.raw" "$REPO/sub/v2.raw")
want_peer=$(( $(missing_bytes "$REPO/w.raw") - want_src ))
check "SOURCE sent only what no peer holds ($want_src bytes)" \
  [ "$(json_get "$WORK/c.json" bytes_fetched)/$(sent /repo/)" = "$want_src/$want_src" ]
check "bytes_from_peers = the rest ($want_peer bytes), as nginx sent them" \
  [ "$(json_get "$WORK/c.json" bytes_from_peers)/$(( $(sent /node-a/) + $(sent /node-b/) ))" = "$want_peer/$want_peer" ]
check "both peers served" [ "$(sent /node-a/)" -gt 0 ] && [ "$(sent /node-b/)" -gt 0 ]

# 2. a tampered peer file: a warning, the block from elsewhere, output exact
cp -a "$WORK/node-a" "$WORK/node-t"
img_a=$(ls "$WORK/node-t/images/"*)
python3 - "$img_a" "$REPO/w.raw" "$REPO/sub/v2.raw" <<'PY'
# flip a byte in a block of v1 that w needs and v2 lacks: only SOURCE has it then
import hashlib, sys
v1, w, v2 = (open(p, "rb").read() for p in sys.argv[1:4])
def digests(d):
    return {hashlib.sha256(d[o:o + 4096]).digest() for o in range(0, len(d), 4096) if d[o:o + 4096].strip(b"\0")}
need = digests(w) - digests(v2)
for o in range(0, len(v1), 4096):
    b = v1[o:o + 4096]
    if b.strip(b"\0") and hashlib.sha256(b).digest() in need:
        with open(sys.argv[1], "r+b") as f:
            f.seek(o + 100); f.write(bytes([b[100] ^ 0xFF]))
        break
PY
nginx_log_reset
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-d" --peer "$NGINX_URL/node-t" --peer "$PB" --json -q \
  w.raw > "$WORK/d.json" 2> "$WORK/d.err"
check "tampered peer: byte-exact anyway" cmp "$REPO/w.raw" "$(json_get "$WORK/d.json" output)"
check "tampered peer: a warning naming it" grep -q "node-t.*does not match its digest" "$WORK/d.err"
src=$(json_get "$WORK/d.json" bytes_fetched)
check "tampered peer: SOURCE sent the damaged block too ($src bytes, $want_src to $((want_src + want_peer)))" \
  [ "$src" -ge "$((want_src + BS))" ] && [ "$src" -le "$((want_src + want_peer))" ]
check "tampered peer: SOURCE sent what imgdedup counted" [ "$(sent /repo/)" = "$src" ]

# 3. a dead peer and a peer with a damaged index: warnings, the live peer used
mkdir -p "$WORK/node-x"
cp -a "$WORK/node-a/." "$WORK/node-x/"
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(40); b=f.read(1); f.seek(40); f.write(bytes([b[0]^1]))' "$WORK/node-x/index"
dead=http://127.0.0.1:$(nginx_free_port)/node-gone
nginx_log_reset
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-e" --peer "$dead" --peer "$NGINX_URL/node-x" \
  --peer "$PB" --json -q w.raw > "$WORK/e.json" 2> "$WORK/e.err"
cat "$WORK/e.err"
check "dead and damaged peers: byte-exact" cmp "$REPO/w.raw" "$(json_get "$WORK/e.json" output)"
check "dead peer: a warning" grep -q "node-gone" "$WORK/e.err"
check "damaged peer index: a warning" grep -q "node-x" "$WORK/e.err"
want=$(missing_bytes "$REPO/w.raw" "$REPO/sub/v2.raw")
check "SOURCE sent what the live peer lacks ($want bytes)" \
  [ "$(json_get "$WORK/e.json" bytes_fetched)/$(sent /repo/)" = "$want/$want" ]

# 4. no peer usable at all: a plain deploy
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-f" --peer "$dead" --json -q w.raw \
  > "$WORK/f.json" 2> /dev/null
check "all peers dead: byte-exact from SOURCE" cmp "$REPO/w.raw" "$(json_get "$WORK/f.json" output)"
check "all peers dead: bytes_from_peers 0" [ "$(json_get "$WORK/f.json" bytes_from_peers)" = 0 ]
# 5. serve with peers: a full read over NBD takes from the peers what they
#    hold, and from SOURCE only the rest
source "$TESTS_DIR/serve.sh"
nginx_log_reset
serve_start sp --from "$SRC" --cache "$WORK/node-s" --peer "$PA" --peer "$PB" w.raw
nbdcopy "$(serve_uri sp w.raw)" "$WORK/w.served"
serve_stop sp
check "serve --peer: byte-exact" cmp "$REPO/w.raw" "$WORK/w.served"
want_src=$(missing_bytes "$REPO/w.raw" "$REPO/v1.raw" "$REPO/sub/v2.raw")
check "serve --peer: bytes_from_peers > 0" [ "$(serve_stat sp bytes_from_peers)" -gt 0 ]
check "serve --peer: SOURCE sent at most what no peer holds plus readahead" \
  [ "$(sent /repo/)" -le $(( want_src + 4194304 )) ]
echo "test_peers: all passed"
