#!/usr/bin/env bash
# imgdedup serve: NBD exports read byte for byte like the source, for raw,
# qcow2 (plain and compressed), a VMDK in an OVA and a tar member, from a
# local source and over nginx, with a cold cache, a sibling cached and the
# image fully cached.  Clients are real: nbdcopy, qemu-img compare, nbdinfo,
# qemu-io.  The --json counters are checked against an independent count
# (blockhash.py over the raw image, nginx's access log): a full read fetches
# each distinct block the cache lacks once, zero blocks never, and reads
# what the cache holds locally.  Also: several exports in one server, TCP,
# the plugin run by nbdkit directly, --fill, --record and --prefetch, and
# the usage and start-up errors.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy nbdinfo qemu-img qemu-io; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
PLUGIN=$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so
[ -f "$PLUGIN" ] || fail "no plugin next to $IMGDEDUP (make builds $PLUGIN)"

REPO=$WORK/repo
T=$WORK/t
BS=4096
mkdir -p "$REPO" "$T/fs" "$T/ova"

# An ext4 of real files (compressible, random, with holes), 12 MiB.
cp -r /usr/share/common-licenses "$T/fs/lic"
python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(900000))' "$T/fs/rnd.bin"
python3 - "$T/fs/words.txt" <<'PY'
import random, sys
r = random.Random(6)
words = ["%s%d" % (w, r.randrange(1000)) for w in ("alpha", "beta", "gamma", "delta") * 200]
open(sys.argv[1], "w").write(" ".join(r.choice(words) for _ in range(400000)))
PY
mkext4 "$REPO/base.raw" 12 "$T/fs"
# a sibling: the same image with 40 blocks changed and a block repeated
python3 - "$REPO/base.raw" "$REPO/sib.raw" <<'PY'
import random, sys
d = bytearray(open(sys.argv[1], "rb").read())
r = random.Random(7)
for b in r.sample(range(len(d) // 4096), 40):
    d[b * 4096:(b + 1) * 4096] = r.randbytes(4096)
d[100 * 4096:101 * 4096] = d[300 * 4096:301 * 4096]
open(sys.argv[2], "wb").write(d)
PY
qemu-img convert -f raw -O qcow2 "$REPO/base.raw" "$REPO/plain.qcow2"
qemu-img convert -f raw -O qcow2 -c "$REPO/base.raw" "$REPO/comp.qcow2"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$REPO/base.raw" "$T/ova/disk1.vmdk"
printf '<?xml version="1.0"?><Envelope/>\n' > "$T/ova/vm.ovf"
tar cf "$REPO/vm.ova" -C "$T/ova" vm.ovf disk1.vmdk
cp "$REPO/base.raw" "$T/disk.raw"
tar cf "$REPO/plain.tar" -C "$T" disk.raw
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
REF=$REPO/base.raw
SIZE=$(stat -c %s "$REF")
read -r ZERO_BYTES NEW_COLD _ NONZERO_BYTES < <(serve_expect "$REF" $BS)
[ "$ZERO_BYTES" -gt 0 ] && [ "$NEW_COLD" -gt 500 ] || fail "test image: $ZERO_BYTES zero bytes, $NEW_COLD blocks"
echo "reference: $SIZE bytes, $ZERO_BYTES zero, $NEW_COLD distinct non-zero blocks"

nginx_start "$REPO"
# bytes nginx sent of FILE (not the index), and whether any byte of it was sent twice
file_bytes() { awk -v u="/$1" '$2 == u {s += $4} END {print s + 0}' "$NGINX_LOG"; }
file_requests() { awk -v u="/$1" '$2 == u {n++} END {print n + 0}' "$NGINX_LOG"; }
file_overlaps() {
  awk -v u="/$1" '$2 == u {print $5}' "$NGINX_LOG" | python3 -c '
import re, sys
rs = sorted(tuple(map(int, m.groups())) for m in (re.search(r"bytes=(\d+)-(\d+)", l) for l in sys.stdin) if m)
print(sum(1 for a, b in zip(rs, rs[1:]) if b[0] <= a[1]))'
}

# hole extents reported by nbdinfo --map = the zero blocks of REF
check_map() {
  nbdinfo --map --json "$1" > "$WORK/map.json"
  python3 - "$WORK/map.json" "$REF" "$TESTS_DIR" $BS <<'PY'
import json, sys
sys.path.insert(0, sys.argv[3])
from blockhash import blocks, ZERO
bs = int(sys.argv[4])
want = {i for i, d in enumerate(blocks(sys.argv[2], bs)) if d == ZERO}
got, covered = set(), 0
for e in json.load(open(sys.argv[1])):
    assert e["offset"] == covered, ("gap in the map", e)
    covered += e["length"]
    if e["type"] & 1:
        assert e["type"] == 3, ("a hole that is not zero", e)
        assert e["offset"] % bs == 0 and e["length"] % bs == 0, ("hole not block aligned", e)
        got.update(range(e["offset"] // bs, (e["offset"] + e["length"]) // bs))
if got != want:
    sys.exit("holes differ from the zero blocks: %d reported, %d zero blocks, %d differ"
             % (len(got), len(want), len(got ^ want)))
print(len(got))
PY
}

# One image, one source, a cold cache: a full read, then a fully cached one.
cold_then_warm() { # SOURCE_KIND ID
  local kind=$1 id=$2 src tag cache fetched
  if [ "$kind" = local ]; then src=$REPO; else src=$NGINX_URL; fi
  tag=$kind-$(echo "$id" | tr '/.' '__')
  cache=$WORK/cache-$tag
  nginx_log_reset
  serve_start "$tag" --from "$src" --cache "$cache" "$id"
  nbdcopy --no-extents "$(serve_uri "$tag" "$id")" "$WORK/out.raw"
  serve_stop "$tag"
  cmp "$WORK/out.raw" "$REF" || fail "$kind $id: nbdcopy read differs from the source"
  check "$kind $id (cold): bytes_read is the image" test "$(serve_stat "$tag" bytes_read)" = "$SIZE"
  check "$kind $id (cold): bytes_zero is its zero blocks" test "$(serve_stat "$tag" bytes_zero)" = "$ZERO_BYTES"
  check "$kind $id (cold): every distinct block cached once" test "$(serve_stat "$tag" blocks_filled)" = "$NEW_COLD"
  check "$kind $id (cold): no read error" test "$(serve_stat "$tag" read_errors)" = 0
  fetched=$(serve_stat "$tag" bytes_fetched)
  case $id in
    base.raw|plain.tar/disk.raw|plain.qcow2)
      check "$kind $id (cold): fetched the distinct blocks once" test "$fetched" = $((NEW_COLD * BS)) ;;
    *) # compressed: less than the data, more than nothing
      check "$kind $id (cold): fetched compressed data" test "$fetched" -gt 0 -a "$fetched" -lt $((NEW_COLD * BS)) ;;
  esac
  if [ "$kind" = nginx ]; then
    local file=${id%%/*} sent
    sent=$(file_bytes "$file")
    case $id in
      base.raw|plain.tar/disk.raw)
        check "$kind $id (cold): bytes_fetched is what nginx sent of $file" test "$sent" = "$fetched" ;;
      *) # bytes_fetched is block payload; the format's header and tables come on top
        check "$kind $id (cold): nginx sent the payload plus < 512 KiB of $file's metadata" \
          test "$sent" -ge "$fetched" -a "$sent" -lt $((fetched + (512 << 10))) ;;
    esac
    check "$kind $id (cold): requests count nginx's" test "$(serve_stat "$tag" requests)" -ge "$(file_requests "$file")"
    case $id in base.raw|plain.tar/disk.raw)
      check "$kind $id (cold): no byte of $file fetched twice" test "$(file_overlaps "$file")" = 0 ;;
    esac
  fi
  # fully cached: qemu-img compare and nbdcopy (both skip holes), the map
  nginx_log_reset
  serve_start "$tag-warm" --from "$src" --cache "$cache" "$id"
  qemu-img compare -q -f raw -F raw "$REF" "$(serve_uri "$tag-warm" "$id")" ||
    fail "$kind $id: qemu-img compare over NBD differs"
  nbdcopy "$(serve_uri "$tag-warm" "$id")" "$WORK/out2.raw"
  local holes
  holes=$(check_map "$(serve_uri "$tag-warm" "$id")") || fail "$kind $id: nbdinfo --map"
  serve_stop "$tag-warm"
  cmp "$WORK/out2.raw" "$REF" || fail "$kind $id (warm): nbdcopy read differs"
  check "$kind $id (warm): nothing fetched" test "$(serve_stat "$tag-warm" bytes_fetched)" = 0
  check "$kind $id (warm): nothing cached anew" test "$(serve_stat "$tag-warm" blocks_filled)" = 0
  [ "$kind" = local ] || check "$kind $id (warm): nginx sent nothing of the image" test "$(file_bytes "${id%%/*}")" = 0
  local read zero local_bytes
  read=$(serve_stat "$tag-warm" bytes_read) zero=$(serve_stat "$tag-warm" bytes_zero)
  local_bytes=$(serve_stat "$tag-warm" bytes_from_cache)
  check "$kind $id (warm): every non-zero byte read came from the cache" test "$local_bytes" = $((read - zero))
  echo "ok: $kind $id: exact cold and warm; $holes holes in nbdinfo --map; cold fetched $fetched bytes"
}

for id in base.raw plain.qcow2 comp.qcow2 vm.ova/disk1.vmdk plain.tar/disk.raw; do
  cold_then_warm local "$id"
done
for id in base.raw comp.qcow2 vm.ova/disk1.vmdk plain.tar/disk.raw; do
  cold_then_warm nginx "$id"
done

# A sibling cached: deploy sib.raw, then serve base.raw and comp.qcow2.
read -r _ NEW_SIB CACHED_SIB _ < <(serve_expect "$REF" $BS "$REPO/sib.raw")
echo "with sib.raw cached: $NEW_SIB new blocks, $CACHED_SIB bytes in the cache"
[ "$NEW_SIB" -gt 0 ] && [ "$NEW_SIB" -lt 100 ] || fail "sibling shares too little: $NEW_SIB"
for id in base.raw comp.qcow2; do
  tag=sib-${id%%.*}
  "$IMGDEDUP" deploy -q --from "$NGINX_URL" --cache "$WORK/cache-$tag" sib.raw
  nginx_log_reset
  serve_start "$tag" --from "$NGINX_URL" --cache "$WORK/cache-$tag" "$id"
  nbdcopy --no-extents "$(serve_uri "$tag" "$id")" "$WORK/out.raw"
  serve_stop "$tag"
  cmp "$WORK/out.raw" "$REF" || fail "sibling cached, $id: read differs"
  check "sibling cached, $id: only the blocks the sibling lacks were cached" \
    test "$(serve_stat "$tag" blocks_filled)" = "$NEW_SIB"
  check "sibling cached, $id: at least the sibling's blocks read locally" \
    test "$(serve_stat "$tag" bytes_from_cache)" -ge "$CACHED_SIB"
  if [ "$id" = base.raw ]; then
    check "sibling cached, $id: bytes_fetched is what nginx sent" \
      test "$(file_bytes "$id")" = "$(serve_stat "$tag" bytes_fetched)"
    check "sibling cached, base.raw: fetched exactly the missing blocks" \
      test "$(serve_stat "$tag" bytes_fetched)" = $((NEW_SIB * BS))
  else
    check "sibling cached, comp.qcow2: fetched less than cold" \
      test "$(serve_stat "$tag" bytes_fetched)" -lt "$(serve_stat nginx-comp_qcow2 bytes_fetched)"
  fi
done

# Several exports, the first the default; the listing; TCP on 127.0.0.1.
serve_start multi --from "$REPO" --cache "$WORK/cache-multi" sib.raw base.raw
nbdinfo --list --json "nbd+unix:///?socket=$WORK/multi.sock" > "$WORK/list.json"
check "two exports listed" test "$(python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(open(sys.argv[1]))["exports"])))' "$WORK/list.json")" = "base.raw sib.raw"
nbdcopy "nbd+unix:///?socket=$WORK/multi.sock" "$WORK/default.raw"
cmp "$WORK/default.raw" "$REPO/sib.raw" || fail "the default export is not the first image"
nbdcopy "$(serve_uri multi base.raw)" "$WORK/second.raw"
cmp "$WORK/second.raw" "$REF" || fail "second export differs"
if nbdinfo --size "$(serve_uri multi nope.raw)" 2>/dev/null; then fail "an unknown export name was accepted"; fi
serve_stop multi
echo "ok: two exports in one server, the first is the default, unknown names refused"
PORT=$(nginx_free_port)
"$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-multi" --port "$PORT" --json base.raw \
  > "$WORK/tcp.json" 2> "$WORK/tcp.err" &
TCP_PID=$!
SERVE_PIDS+=("$TCP_PID")
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/base.raw" >/dev/null 2>&1 && break; sleep 0.1; done
nbdcopy "nbd://127.0.0.1:$PORT/base.raw" "$WORK/tcp.raw"
kill -TERM "$TCP_PID"; wait "$TCP_PID" || fail "serve --port exited non-zero: $(cat "$WORK/tcp.err")"
cmp "$WORK/tcp.raw" "$REF" || fail "TCP read differs"
check "TCP export: served from the cache" test "$(json_get "$WORK/tcp.json" bytes_fetched)" = 0

# The plugin run by nbdkit itself, as `nbdkit imgdedup ...` is once installed.
nbdkit -f --exit-with-parent -U "$WORK/direct.sock" -P "$WORK/direct.pid" "$PLUGIN" \
  from="$REPO" cache="$WORK/cache-direct" image=vm.ova/disk1.vmdk stats="$WORK/direct.json" \
  2> "$WORK/direct.err" &
DIRECT_PID=$!
for _ in $(seq 100); do [ -s "$WORK/direct.pid" ] && break; sleep 0.1; done
nbdcopy "nbd+unix:///vm.ova/disk1.vmdk?socket=$WORK/direct.sock" "$WORK/direct.raw"
kill -TERM "$DIRECT_PID"; wait "$DIRECT_PID" || fail "nbdkit with the plugin: $(cat "$WORK/direct.err")"
cmp "$WORK/direct.raw" "$REF" || fail "nbdkit + plugin: read differs"
check "nbdkit + plugin: stats=FILE written" test "$(json_get "$WORK/direct.json" blocks_filled)" = "$NEW_COLD"
nbdkit "$PLUGIN" --dump-plugin > "$WORK/dump.txt" || fail "nbdkit --dump-plugin"
check "nbdkit --dump-plugin names the plugin" grep -q '^name=imgdedup$' "$WORK/dump.txt"

# --record while reading three ranges, then --prefetch of that record on an
# empty cache fetches those blocks with no client reading anything.
serve_start rec --from "$NGINX_URL" --cache "$WORK/cache-rec" --record "$WORK/boot.profile" base.raw
for r in "0 65536" "4194304 131072" "8388608 4096"; do
  qemu-io -r -f raw -c "read ${r% *} ${r#* }" "$(serve_uri rec base.raw)" >/dev/null || fail "qemu-io read $r"
done
serve_stop rec
check "--record wrote a profile" test -s "$WORK/boot.profile"
nginx_log_reset
serve_start pre --from "$NGINX_URL" --cache "$WORK/cache-pre" --prefetch "$WORK/boot.profile" base.raw
want=$(python3 - "$REF" <<'PY'
import hashlib, sys
d = open(sys.argv[1], "rb").read()
blocks = set()
for off, n in ((0, 65536), (4194304, 131072), (8388608, 4096)):
    for b in range(off // 4096, (off + n) // 4096):
        blk = d[b * 4096:(b + 1) * 4096]
        if blk.count(0) != 4096:
            blocks.add(hashlib.sha256(blk).digest())
print(len(blocks) * 4096)
PY
)
for _ in $(seq 100); do [ "$(file_bytes base.raw)" -ge "$want" ] && break; sleep 0.1; done
serve_stop pre
check "--prefetch: no client read" test "$(serve_stat pre reads)" = 0
check "--prefetch: fetched the recorded blocks ($want bytes) ahead" test "$(serve_stat pre bytes_fetched)" -ge "$want"

# --fill: the whole image fetched in the background; afterwards a deploy
# takes everything from the cache.
nginx_log_reset
serve_start fill --from "$NGINX_URL" --cache "$WORK/cache-fill" --fill base.raw
for _ in $(seq 300); do [ "$(file_bytes base.raw)" -ge $((NEW_COLD * BS)) ] && break; sleep 0.1; done
sleep 0.5   # the last blocks are written and recorded
serve_stop fill
# the filled image is a whole raw image: every non-zero block in its place
check "--fill: every non-zero block written into the cache" test "$(serve_stat fill blocks_filled)" = $((NONZERO_BYTES / BS))
check "--fill: each distinct block fetched once" test "$(serve_stat fill bytes_fetched)" = $((NEW_COLD * BS))
check "--fill: the export is complete" test "$(serve_stat fill exports_complete)" = 1
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$WORK/cache-fill" -o "$WORK/filled.raw" --json -q base.raw \
  > "$WORK/filled.json"
cmp "$WORK/filled.raw" "$REF" || fail "deploy after --fill differs"
check "--fill: a later deploy fetches nothing" test "$(json_get "$WORK/filled.json" bytes_fetched)" = 0

# Errors: usage (2), an unknown image, no nbdkit, a busy socket (1).
expect_status() { # STATUS WHAT CMD...
  local want=$1 what=$2 rc=0; shift 2
  "$@" > "$WORK/e.out" 2> "$WORK/e.err" || rc=$?
  [ "$rc" = "$want" ] || fail "$what: exit $rc, want $want ($(cat "$WORK/e.err"))"
  [ "$want" = 0 ] || [ -s "$WORK/e.err" ] || fail "$what: no message"
  echo "ok: $what: exit $rc: $(head -n 1 "$WORK/e.err")"
}
expect_status 2 "no --socket nor --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" base.raw
expect_status 2 "both --socket and --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" --port 9 base.raw
expect_status 2 "no IMAGE" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock"
expect_status 2 "bad --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --port 99999 base.raw
expect_status 2 "unknown option" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" --bogus base.raw
expect_status 1 "unknown image" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" nope.raw
grep -q 'nope.raw' "$WORK/e.err" || fail "the error does not name the image: $(cat "$WORK/e.err")"
[ ! -e "$WORK/x.sock" ] || fail "a failed start left its socket"
expect_status 1 "no index at the source" "$IMGDEDUP" serve --from "$WORK" --cache "$WORK/c" --socket "$WORK/x.sock" base.raw
expect_status 1 "nbdkit not on PATH" env PATH=/nonexistent "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" base.raw
serve_start busy --from "$REPO" --cache "$WORK/cache-multi" base.raw
expect_status 1 "socket in use" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-multi" --socket "$WORK/busy.sock" base.raw
serve_stop busy
: > "$WORK/plain-file"
expect_status 1 "socket path is a regular file" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/plain-file" base.raw
check "the regular file was left alone" test -f "$WORK/plain-file"
echo "PASS test_serve"
