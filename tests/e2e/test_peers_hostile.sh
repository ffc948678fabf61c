#!/usr/bin/env bash
# Malicious peers (docs/peers.md: a peer is untrusted): badpeer.py serves a
# real node cache (its index and images, as nginx would) but answers image
# requests with wrong bytes, half the range, nothing at all, an endless
# body, the whole file ignoring Range, or an endless index.  serve (read
# by python3-libnbd readers, nbdclients.py) and deploy with such a peer:
# every byte exact (compared with the image itself), no read error, the
# peer was asked and warned about, and every run ends (the peer given up
# after --timeout; the bounds below only keep a hang from stalling the
# suite, nothing is timed).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
command -v nbdkit >/dev/null || fail "nbdkit missing (scripts/install-deps)"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || fail "python3-libnbd missing (scripts/install-deps)"
CLIENTS="/usr/bin/python3 $TESTS_DIR/nbdclients.py"

REPO=$WORK/repo
mkdir -p "$REPO"
# two 4 MiB images sharing all but 100 blocks: a peer holding base.raw
# holds most of sib.raw
python3 - "$REPO" <<'PY'
import random, sys
r = random.Random(51)
base = [bytes(4096) if i % 11 == 3 else r.randbytes(4096) for i in range(1024)]
sib = list(base)
for i in r.sample(range(1024), 100):
    sib[i] = r.randbytes(4096)
open(sys.argv[1] + "/base.raw", "wb").write(b"".join(base))
open(sys.argv[1] + "/sib.raw", "wb").write(b"".join(sib))
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$WORK"
SRC=$NGINX_URL/repo
CHUNKS=$(( (4 << 20) / 65536 ))
# the honest peer's cache: base.raw deployed there
"$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/node-a" -q base.raw

field() { json_get "$1" "$2"; }
readers_ok() {
  [ "$(field "$1" wrong)/$(field "$1" eio)/$(field "$1" dead)/$(field "$1" ok)" = "0/0/0/$2" ] ||
    { echo "readers: $(cat "$1")" >&2; return 1; }
}

# a control: the honest peer (nginx) supplies most of sib.raw
serve_start ok --from "$SRC" --cache "$WORK/c-ok" --peer "$NGINX_URL/node-a" sib.raw
$CLIENTS readers "$(serve_uri ok sib.raw)" "$REPO/sib.raw" 2 > "$WORK/r-ok.json" || fail "honest peer: $(cat "$WORK/r-ok.json")"
serve_stop ok
check "honest peer: 2 readers exact" readers_ok "$WORK/r-ok.json" $((2 * CHUNKS))
check "honest peer: it supplied blocks ($(serve_stat ok bytes_from_peers) bytes)" test "$(serve_stat ok bytes_from_peers)" -gt 0

BP_PID=
stop_badpeer() { if [ -n "$BP_PID" ]; then kill "$BP_PID" 2>/dev/null; wait "$BP_PID" 2>/dev/null || true; fi; BP_PID=; }
cleanup_fns+=(stop_badpeer)
start_badpeer() { # MODE
  stop_badpeer
  rm -f "$WORK/bp.port" "$WORK/bp.log"
  python3 "$TESTS_DIR/badpeer.py" --root "$WORK/node-a" --port-file "$WORK/bp.port" --mode "$1" \
    --log "$WORK/bp.log" 2> "$WORK/bp.err" &
  BP_PID=$!
  local i
  for i in $(seq 100); do [ -s "$WORK/bp.port" ] && break; sleep 0.05; done
  [ -s "$WORK/bp.port" ] || fail "badpeer.py did not start: $(cat "$WORK/bp.err")"
  BAD=http://127.0.0.1:$(cat "$WORK/bp.port")
}

for mode in wrong truncated hang huge norange hugeindex; do
  start_badpeer "$mode"
  serve_start "s-$mode" --from "$SRC" --cache "$WORK/c-$mode" --peer "$BAD" --timeout 2 sib.raw
  rc=0
  timeout 300 $CLIENTS readers "$(serve_uri "s-$mode" sib.raw)" "$REPO/sib.raw" 2 > "$WORK/r-$mode.json" || rc=$?
  [ "$rc" = 0 ] || fail "serve, $mode peer: readers exit $rc: $(cat "$WORK/r-$mode.json")"
  serve_stop "s-$mode"
  check "serve, $mode peer: 2 readers read sib.raw, every byte exact, no read error" \
    readers_ok "$WORK/r-$mode.json" $((2 * CHUNKS))
  if [ "$mode" = hugeindex ]; then
    check "serve, $mode peer: its index was asked for" grep -q "^GET index" "$WORK/bp.log"
    sent=$(awk '/^SENT/ {s += $2} END {print s + 0}' "$WORK/bp.log")
    check "serve, $mode peer: refused at its announced size, $((sent >> 20)) MiB taken of the endless index (< 64 MiB)" \
      test "$sent" -lt $((64 << 20))
  else
    check "serve, $mode peer: its images were asked for" grep -q "^GET images/" "$WORK/bp.log"
  fi
  check "serve, $mode peer: a warning names it ($(grep -m1 -o 'peer.*' "$WORK/s-$mode.err" | cut -c1-150))" \
    grep -q "peer.*$BAD" "$WORK/s-$mode.err"
  check "serve, $mode peer: the data came from SOURCE" test "$(serve_stat "s-$mode" bytes_fetched)" -gt 0
  # deploy with the same peer: exact, exit 0 (a hanging peer costs deploy
  # what it cost serve: not repeated)
  [ "$mode" = hang ] && continue
  rc=0
  timeout 300 "$IMGDEDUP" deploy --from "$SRC" --cache "$WORK/d-$mode" --peer "$BAD" --timeout 2 \
    -o "$WORK/d-$mode.raw" --json -q sib.raw > "$WORK/d-$mode.json" 2> "$WORK/d-$mode.err" || rc=$?
  check "deploy, $mode peer: succeeds (rc $rc)" test "$rc" = 0
  check "deploy, $mode peer: byte-exact" cmp "$WORK/d-$mode.raw" "$REPO/sib.raw"
  check "deploy, $mode peer: a warning names it" grep -q "peer.*$BAD" "$WORK/d-$mode.err"
done
stop_badpeer
check "no sanitizer report" eval '! grep -l -E "ERROR: AddressSanitizer|runtime error:" "$WORK"/*.err'
echo "PASS test_peers_hostile"
