#!/usr/bin/env bash
# imgdedup serve with blocks that no source can supply verified (here: the
# index of another repository, so every block fails verification): each
# read fails with EIO, and a guest retrying its reads costs next to nothing.
#  - no readahead around a failed block: a failed 4 KiB read fetches at most
#    its own block, never the 2 MiB after it;
#  - a failed block is remembered: reads of it in the next second fail at
#    once, fetching nothing; after that backoff it is tried again.
# Reads are made with nbdraw.py (one connection, each reply's error code).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdinfo; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

BS=4096
mkdir -p "$WORK/a" "$WORK/b"
python3 -c 'import random,sys; open(sys.argv[1],"wb").write(random.Random(1).randbytes(4 << 20))' "$WORK/a/x.raw"
python3 -c 'import random,sys; open(sys.argv[1],"wb").write(random.Random(2).randbytes(4 << 20))' "$WORK/b/x.raw"
"$IMGDEDUP" scan -q "$WORK/b"
"$IMGDEDUP" map -q "$WORK/b"
nginx_start "$WORK/a"
serve_start wrong --from "$NGINX_URL" --index "$WORK/b/.imgdedup" --cache "$WORK/cache" x.raw
SOCK=$SERVE_SOCK

# 8 blocks, each read 5 times in a row
nginx_log_reset
python3 - "$TESTS_DIR" "$SOCK" > "$WORK/reads.out" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from nbdraw import Client
c = Client(sys.argv[2], "x.raw")
for blk in (3, 100, 101, 250, 400, 555, 700, 1000):
    for _ in range(5):
        err, _data = c.read(blk * 4096, 4096)
        print(err)
c.close()
PY
check "40 reads of failed blocks: every one EIO" test "$(grep -c '^5$' "$WORK/reads.out")" = 40
sent=$(nginx_bytes)
check "no readahead around a failed block: nginx sent at most one block per read ($sent bytes)" \
  test "$sent" -le $((40 * BS))
check "a failed block is not fetched again by the reads right after it ($sent bytes for 8 blocks)" \
  test "$sent" -le $((8 * 2 * BS))
check "the error says when the block is tried again" grep -q 'next attempt in' "$WORK/wrong.err"

# after the backoff (1 s after the first failure) the block is tried again
requests_for() { grep -c "\"bytes=$(( $1 * BS ))-" "$NGINX_LOG" || true; }
before=$(requests_for 3)
sleep 1.5
python3 "$TESTS_DIR/nbdraw.py" "$SOCK" x.raw $((3 * BS)) $BS > "$WORK/again.out"
check "after the backoff: still EIO" grep -qx 'error 5' "$WORK/again.out"
check "after the backoff: the block was fetched once more" test "$(requests_for 3)" = $((before + 1))
serve_stop wrong
check "read errors counted" test "$(serve_stat wrong read_errors)" = 41
check "bytes_fetched agrees with nginx" test "$(serve_stat wrong bytes_fetched)" = "$(nginx_bytes)"
echo "ok: 41 failed reads fetched $(nginx_bytes) bytes in all ($(serve_stat wrong requests) requests); $(grep -m1 'next attempt' "$WORK/wrong.err")"
echo "PASS test_serve_failed_blocks"
