# serve.sh - run `imgdedup serve` in the background for a test (sourced
# after lib.sh).
#   serve_start NAME ARGS...   serve over the unix socket $WORK/NAME.sock with
#                              --json; ARGS are the other options and images.
#                              Returns once the socket accepts connections.
#                              Sets SERVE_SOCK; the pid is in $WORK/NAME.pid.
#                              SERVE_SOCKET=PATH: that socket instead (a
#                              restart on the socket of an earlier NAME).
#   serve_stop NAME            SIGTERM, wait: exit status 0 and the stats
#                              object in $WORK/NAME.json (stderr: NAME.err)
#   serve_kill9 NAME           SIGKILL to nbdkit and to serve: nothing is
#                              cleaned up (the durability tests)
#   serve_uri NAME ID          nbd+unix:///ID?socket=...
#   serve_stat NAME KEY        a counter from NAME.json
#   serve_expect REF BS [CACHED_REF...]
#                              what a full read of REF (raw) must cost with the
#                              node cache holding CACHED_REF images, computed
#                              with blockhash.py: prints "zero_bytes
#                              new_blocks cached_bytes nonzero_bytes"
#   serve_corpus               the serve scripts' repository (a fixture):
#                              REPO, REF, SIZE, BS and its expected costs
#   serve_cold_then_warm local|nginx ID
#                              one image read cold then cached, checked
#   serve_check_map URI        nbdinfo --map's holes are REF's zero blocks
SERVE_PIDS=()

# a clean handshake: with --all there is no default export, the list of
# exports is asked (and no export opened: a test sees their first use)
serve_probe() {
  local sock=$1 a
  shift
  for a in "$@"; do
    if [ "$a" = --all ]; then
      /usr/bin/python3 -c 'import nbd, sys; h = nbd.NBD(); h.set_opt_mode(True)
h.connect_unix(sys.argv[1]); h.opt_list(lambda name, desc: 0); h.opt_abort()' "$sock" >/dev/null 2>&1
      return
    fi
  done
  nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1
}

serve_start() {
  local name=$1 i
  shift
  SERVE_SOCK=${SERVE_SOCKET:-$WORK/$name.sock}
  echo "$SERVE_SOCK" > "$WORK/$name.sockpath"
  "$IMGDEDUP" serve --socket "$SERVE_SOCK" --json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err" &
  local pid=$!
  echo "$pid" > "$WORK/$name.pid"
  SERVE_PIDS+=("$pid")
  for i in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || true
      fail "serve $name exited before it was ready: $(cat "$WORK/$name.err")"
    fi
    # the socket exists once nbdkit listens; a clean NBD handshake proves
    # the server is ready (a bare connect would leave an error in its log)
    if [ -S "$SERVE_SOCK" ] && serve_probe "$SERVE_SOCK" "$@"; then
      return 0
    fi
    sleep 0.1
  done
  fail "serve $name: socket $SERVE_SOCK not ready after 30 s: $(cat "$WORK/$name.err")"
}

serve_stop() {
  local name=$1 pid rc=0
  pid=$(cat "$WORK/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "serve $name exited with $rc: $(cat "$WORK/$name.err")"
  [ -s "$WORK/$name.json" ] || fail "serve $name printed no statistics"
  [ ! -e "$(_serve_sock "$name")" ] || fail "serve $name left its socket behind"
}

serve_kill9() {
  local name=$1 pid child
  pid=$(cat "$WORK/$name.pid")
  for child in $(pgrep -P "$pid"); do kill -KILL "$child" 2>/dev/null || true; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# every serve still running when the test ends is stopped
serve_cleanup() {
  local pid
  for pid in "${SERVE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SERVE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
cleanup_fns+=(serve_cleanup)

# the socket serve_start NAME used ($WORK/NAME.sock for a serve started otherwise)
_serve_sock() { if [ -s "$WORK/$1.sockpath" ]; then cat "$WORK/$1.sockpath"; else echo "$WORK/$1.sock"; fi; }
serve_uri() { echo "nbd+unix:///$2?socket=$(_serve_sock "$1")"; }
# the counters of NAME.json as "KEY<TAB>VALUE" lines (what json_get prints),
# made once per version of the file: a python start per counter cost most
# of the time of the scripts that check many
serve_stat() {
  local json=$WORK/$1.json flat=$WORK/.stats/$1
  if [ ! -e "$flat" ] || [ "$json" -nt "$flat" ]; then
    mkdir -p "$WORK/.stats"
    python3 -c 'import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    print("%s\t%s" % (k, v))' "$json" > "$flat.tmp" && mv "$flat.tmp" "$flat" || return 1
  fi
  awk -F '\t' -v k="$2" '$1 == k {print substr($0, length(k) + 2); found = 1; exit}
    END {if (!found) {print "serve_stat: no " k " in " FILENAME > "/dev/stderr"; exit 1}}' "$flat"
}

serve_expect() {
  python3 - "$TESTS_DIR" "$@" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from blockhash import blocks, ZERO
ref, bs, cached_refs = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cached = set()
for c in cached_refs:
    cached.update(d for d in blocks(c, bs) if d != ZERO)
ds = blocks(ref, bs)
zero = sum(1 for d in ds if d == ZERO)
new = {d for d in ds if d != ZERO and d not in cached}
from_cache = sum(1 for d in ds if d != ZERO and d in cached)
print(zero * bs, len(new), from_cache * bs, (len(ds) - zero) * bs)
PY
}

# serve_corpus: the repository the serve scripts read (a fixture built once
# per run, see fixture in lib.sh), indexed, in $REPO: base.raw (an ext4 of
# real files: compressible, random, with holes, 12 MiB), sib.raw (base.raw
# with 40 blocks changed and a block repeated), plain.qcow2, comp.qcow2,
# vm.ova/disk1.vmdk and plain.tar/disk.raw (base.raw in those formats).
# Sets REF (base.raw), SIZE, BS, and what a full read of REF costs:
# ZERO_BYTES, NEW_COLD (distinct non-zero blocks), NONZERO_BYTES, and with
# sib.raw cached NEW_SIB blocks, CACHED_SIB bytes.
_serve_corpus_build() {
  local repo=$1/repo t=$1/t
  mkdir -p "$repo" "$t/fs" "$t/ova"
  cp -r /usr/share/common-licenses "$t/fs/lic"
  python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(900000))' "$t/fs/rnd.bin"
  python3 - "$t/fs/words.txt" <<'PY'
import random, sys
r = random.Random(6)
words = ["%s%d" % (w, r.randrange(1000)) for w in ("alpha", "beta", "gamma", "delta") * 200]
open(sys.argv[1], "w").write(" ".join(r.choice(words) for _ in range(400000)))
PY
  mkext4 "$repo/base.raw" 12 "$t/fs"
  python3 - "$repo/base.raw" "$repo/sib.raw" <<'PY'
import random, sys
d = bytearray(open(sys.argv[1], "rb").read())
r = random.Random(7)
for b in r.sample(range(len(d) // 4096), 40):
    d[b * 4096:(b + 1) * 4096] = r.randbytes(4096)
d[100 * 4096:101 * 4096] = d[300 * 4096:301 * 4096]
open(sys.argv[2], "wb").write(d)
PY
  qemu-img convert -f raw -O qcow2 "$repo/base.raw" "$repo/plain.qcow2"
  qemu-img convert -f raw -O qcow2 -c "$repo/base.raw" "$repo/comp.qcow2"
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$repo/base.raw" "$t/ova/disk1.vmdk"
  printf '<?xml version="1.0"?><Envelope/>\n' > "$t/ova/vm.ovf"
  tar cf "$repo/vm.ova" -C "$t/ova" vm.ovf disk1.vmdk
  cp "$repo/base.raw" "$t/disk.raw"
  tar cf "$repo/plain.tar" -C "$t" disk.raw
  rm -rf "$t"
  "$IMGDEDUP" scan -q "$repo"
  "$IMGDEDUP" map -q "$repo"
  local zero new nonzero new_sib cached_sib
  read -r zero new _ nonzero < <(serve_expect "$repo/base.raw" 4096)
  read -r _ new_sib cached_sib _ < <(serve_expect "$repo/base.raw" 4096 "$repo/sib.raw")
  echo "ZERO_BYTES=$zero NEW_COLD=$new NONZERO_BYTES=$nonzero NEW_SIB=$new_sib CACHED_SIB=$cached_sib" \
    > "$1/expect.sh"
}
serve_corpus() {
  fixture serve-corpus _serve_corpus_build
  REPO=$FIXTURE/repo REF=$FIXTURE/repo/base.raw BS=4096
  source "$FIXTURE/expect.sh"
  SIZE=$(stat -c %s "$REF")
  [ "$ZERO_BYTES" -gt 0 ] && [ "$NEW_COLD" -gt 500 ] || fail "test image: $ZERO_BYTES zero bytes, $NEW_COLD blocks"
  echo "reference: $SIZE bytes, $ZERO_BYTES zero, $NEW_COLD distinct non-zero blocks"
}

# serve_check_map URI: the hole extents nbdinfo --map reports are the zero
# blocks of $REF; prints how many
serve_check_map() {
  nbdinfo --map --json "$1" > "$WORK/map.json"
  python3 - "$WORK/map.json" "$REF" "$TESTS_DIR" "$BS" <<'PY'
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

# serve_cold_then_warm local|nginx ID: one image of serve_corpus from one
# source with a cold cache: a full read (nbdcopy), its counters against the
# independent count (and nginx's log); then, fully cached, qemu-img compare,
# nbdcopy and nbdinfo --map, nothing fetched.
serve_cold_then_warm() {
  local kind=$1 id=$2 src tag cache fetched
  if [ "$kind" = local ]; then src=$REPO; else src=$NGINX_URL; fi
  tag=$kind-$(echo "$id" | tr '/.' '__')
  cache=$WORK/cache-$tag
  [ "$kind" = local ] || nginx_log_reset
  serve_start "$tag" --from "$src" --cache "$cache" "$id"
  nbdcopy --no-extents "$(serve_uri "$tag" "$id")" "$WORK/out.raw"
  serve_stop "$tag"
  check "$kind $id (cold): nbdcopy reads the source byte for byte" cmp -s "$WORK/out.raw" "$REF"
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
    sent=$(nginx_file_bytes "$file")
    case $id in
      base.raw|plain.tar/disk.raw)
        check "$kind $id (cold): bytes_fetched is what nginx sent of $file" test "$sent" = "$fetched" ;;
      *) # bytes_fetched is block payload; the format's header and tables come on top
        check "$kind $id (cold): nginx sent the payload plus < 512 KiB of $file's metadata" \
          test "$sent" -ge "$fetched" -a "$sent" -lt $((fetched + (512 << 10))) ;;
    esac
    check "$kind $id (cold): requests count nginx's" test "$(serve_stat "$tag" requests)" -ge "$(nginx_file_requests "$file")"
    case $id in base.raw|plain.tar/disk.raw)
      check "$kind $id (cold): no byte of $file fetched twice" test "$(nginx_file_overlaps "$file")" = 0 ;;
    esac
  fi
  [ "$kind" = local ] || nginx_log_reset
  serve_start "$tag-warm" --from "$src" --cache "$cache" "$id"
  check "$kind $id (warm): qemu-img compare over NBD finds no difference" \
    qemu-img compare -q -f raw -F raw "$REF" "$(serve_uri "$tag-warm" "$id")"
  nbdcopy "$(serve_uri "$tag-warm" "$id")" "$WORK/out2.raw"
  local holes
  holes=$(serve_check_map "$(serve_uri "$tag-warm" "$id")") || fail "$kind $id: nbdinfo --map"
  serve_stop "$tag-warm"
  check "$kind $id (warm): nbdcopy reads the source byte for byte" cmp -s "$WORK/out2.raw" "$REF"
  check "$kind $id (warm): nothing fetched" test "$(serve_stat "$tag-warm" bytes_fetched)" = 0
  check "$kind $id (warm): nothing cached anew" test "$(serve_stat "$tag-warm" blocks_filled)" = 0
  [ "$kind" = local ] || check "$kind $id (warm): nginx sent nothing of the image" test "$(nginx_file_bytes "${id%%/*}")" = 0
  local read zero local_bytes
  read=$(serve_stat "$tag-warm" bytes_read) zero=$(serve_stat "$tag-warm" bytes_zero)
  local_bytes=$(serve_stat "$tag-warm" bytes_from_cache)
  check "$kind $id (warm): every non-zero byte read came from the cache" test "$local_bytes" = $((read - zero))
  echo "ok: $kind $id: exact cold and warm; $holes holes in nbdinfo --map; cold fetched $fetched bytes"
}
