#!/usr/bin/env bash
# imgdedup serve's usage and start-up errors: usage mistakes exit 2, an
# unknown image, a source without an index, no nbdkit, a socket in use or a
# socket path that is a regular file exit 1; each with a message, and a
# failed start leaves no socket and the regular file alone.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/serve.sh"
need_commands nbdkit
serve_corpus

expect_status 2 "no --socket nor --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" base.raw
expect_status 2 "both --socket and --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" --port 9 base.raw
expect_status 2 "no IMAGE" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock"
expect_status 2 "bad --port" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --port 99999 base.raw
expect_status 2 "unknown option" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" --bogus base.raw
expect_status 1 "unknown image" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" nope.raw
check "the error names the image" grep -q 'nope.raw' "$WORK/e.err"
check "a failed start left no socket" test ! -e "$WORK/x.sock"
mkdir -p "$WORK/noindex"
expect_status 1 "no index at the source" "$IMGDEDUP" serve --from "$WORK/noindex" --cache "$WORK/c" --socket "$WORK/x.sock" base.raw
expect_status 1 "nbdkit not on PATH" env PATH=/nonexistent "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/x.sock" base.raw
serve_start busy --from "$REPO" --cache "$WORK/cache-busy" base.raw
expect_status 1 "socket in use" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-busy" --socket "$WORK/busy.sock" base.raw
serve_stop busy
: > "$WORK/plain-file"
expect_status 1 "socket path is a regular file" "$IMGDEDUP" serve --from "$REPO" --cache "$WORK/c" --socket "$WORK/plain-file" base.raw
check "the regular file was left alone" test -f "$WORK/plain-file"
echo "PASS test_serve_errors"
