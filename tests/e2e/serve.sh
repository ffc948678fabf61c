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
serve_stat() { json_get "$WORK/$1.json" "$2"; }

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
