#!/usr/bin/env bash
# Hostile inputs and environments, end to end: output paths that are links,
# devices and FIFOs; write errors; huge sparse images; damaged, swapped and
# hostile index files; FIFOs in the repository; a trickling HTTP server.
source "$(dirname "$0")/lib.sh"

# A small repository: two related images.
R=$WORK/repo; mkdir -p "$R"
python3 - "$R" <<'PY'
import os, random, sys
r = random.Random(11); bs = 4096; d = sys.argv[1]
blk = lambda: bytes(r.getrandbits(8) for _ in range(64)) * (bs // 64)
base = [blk() for _ in range(40)]
open(os.path.join(d, "a.raw"), "wb").write(b"".join(base))
open(os.path.join(d, "b.raw"), "wb").write(b"".join(base[:25] + [blk() for _ in range(10)] + [bytes(bs)] * 5))
PY
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" similarity "$R" > "$WORK/want.csv"

# --- -o: links written through, devices and FIFOs written directly, write errors
echo old > "$WORK/target.csv"
ln -s target.csv "$WORK/link.csv"
"$IMGDEDUP" similarity -o "$WORK/link.csv" "$R"
check "-o through a symlink keeps the link" test -L "$WORK/link.csv"
check "-o through a symlink writes the file it names" cmp "$WORK/want.csv" "$WORK/target.csv"
ln -s nowhere/x.csv "$WORK/dangling.csv"
rc=0; "$IMGDEDUP" similarity -o "$WORK/dangling.csv" "$R" 2> "$WORK/err" || rc=$?
check "-o on a dangling symlink is refused (exit 1)" test "$rc" = 1
check "... with a message saying so" grep -q "dangling" "$WORK/err"
check "... and the link is left alone" test -L "$WORK/dangling.csv"
mkfifo "$WORK/fifo"
cat "$WORK/fifo" > "$WORK/from-fifo" & reader=$!
"$IMGDEDUP" similarity -o "$WORK/fifo" "$R"
wait $reader
check "-o on a FIFO writes into it" cmp "$WORK/want.csv" "$WORK/from-fifo"
check "... and the FIFO stays a FIFO" test -p "$WORK/fifo"
if mknod "$WORK/full" c 1 7 2> /dev/null; then # a private /dev/full (root only)
  rc=0; "$IMGDEDUP" similarity -o "$WORK/full" "$R" 2> "$WORK/err" || rc=$?
  check "-o on a full device fails (exit 1)" test "$rc" = 1
  check "... naming it and the reason" grep -q "full: No space left on device" "$WORK/err"
  check "... and the device node stays a device" test -c "$WORK/full"
else
  echo "skip: -o on a device node (mknod needs root)"
fi
# a write error half-way (the file size limit): exit 1, the old file kept
echo "previous" > "$WORK/s.svg"
rc=0; (trap '' XFSZ; ulimit -f 4; exec "$IMGDEDUP" similarity --format svg -o "$WORK/s.svg" "$R") 2> "$WORK/err" || rc=$?
check "-o write error is exit status 1" test "$rc" = 1
check "... naming the file and the reason" grep -q "s.svg: File too large" "$WORK/err"
check "... leaving the previous file whole" test "$(cat "$WORK/s.svg")" = previous
check "... and no temporary behind" test -z "$(ls "$WORK" | grep '\.tmp\.')"
