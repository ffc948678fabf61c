#!/usr/bin/env bash
# deploy against a hostile node: a symlink or FIFO planted at OUT.part, a
# FIFO as a seed or as the source's image, two deploys of one OUT racing
# (the second's lock delayed so the first renames the file under it), and
# OUT.part removed after a permanent error but kept for a resumable one.
source "$(dirname "$0")/lib.sh"

REPO=$WORK/repo
mkdir -p "$REPO" "$WORK/t"
cp -r /usr/share/common-licenses "$WORK/t/lic"
mkext4 "$REPO/a.raw" 16 "$WORK/t"
python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(8<<20))' "$REPO/b.raw"
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"

# 1. a symlink planted at OUT.part is never written through
echo "precious" > "$WORK/victim"
ln -s "$WORK/victim" "$WORK/out.part"
rc=0; "$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/c1" -o "$WORK/out" -q a.raw 2> "$WORK/e1" || rc=$?
check "symlink OUT.part: exit 1" [ "$rc" = 1 ]
check "symlink OUT.part: named" grep -q "symbolic link" "$WORK/e1"
check "symlink OUT.part: victim untouched" [ "$(cat "$WORK/victim")" = precious ]
check "symlink OUT.part: no OUT" [ ! -e "$WORK/out" ]
rm -f "$WORK/out.part"

# 2. a FIFO at OUT.part, as a seed, or in the source: refused, never a hang
mkfifo "$WORK/out.part"
rc=0; timeout 20 "$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/c1" -o "$WORK/out" -q a.raw 2> "$WORK/e2" || rc=$?
check "FIFO OUT.part: refused, no hang" [ "$rc" = 1 ]
rm -f "$WORK/out.part"
mkfifo "$WORK/seed.fifo"
rc=0; timeout 20 "$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/c1" -o "$WORK/out" --seed "$WORK/seed.fifo" -q a.raw 2> "$WORK/e3" || rc=$?
check "FIFO seed: refused, no hang" [ "$rc" = 1 ]
check "FIFO seed: named" grep -q "seed.fifo" "$WORK/e3"
cp -a "$REPO" "$WORK/repo-fifo"
rm "$WORK/repo-fifo/b.raw"; mkfifo "$WORK/repo-fifo/b.raw"
rc=0; timeout 20 "$IMGDEDUP" deploy --from "$WORK/repo-fifo" --cache "$WORK/c1" -o "$WORK/outf" -q b.raw 2> "$WORK/e4" || rc=$?
check "FIFO in the source: refused, no hang" [ "$rc" = 1 ]

# 3. two deploys of one OUT: the first's flock calls are delayed, so the
#    second finishes and renames OUT.part to OUT while the first has it open;
#    the first must notice and never write into the finished OUT
if command -v strace >/dev/null; then
  rm -rf "$WORK/c3"
  strace -f -o /dev/null -e inject=flock:delay_enter=700000 \
    "$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/c3" -o "$WORK/race" -q b.raw 2> "$WORK/e5" &
  slow=$!
  for i in $(seq 200); do [ -e "$WORK/race.part" ] && break; sleep 0.02; done
  "$IMGDEDUP" deploy --from "$REPO" --cache "$WORK/c3b" -o "$WORK/race" -q b.raw
  rc=0; wait "$slow" || rc=$?
  check "race: the finished OUT is the image" cmp "$REPO/b.raw" "$WORK/race"
  check "race: the delayed deploy failed" [ "$rc" = 1 ]
  check "race: it says OUT exists" grep -q "exists" "$WORK/e5"
else
  echo "skip: strace not installed"
fi

# 4. OUT.part after errors: removed when permanent (the source is damaged),
#    kept when a re-run can resume (a network failure)
cp -a "$REPO" "$WORK/repo-bad"
python3 - "$WORK/repo-bad/b.raw" <<'PY'
import sys
f = open(sys.argv[1], "r+b"); f.seek(4 << 20); f.write(b"\xff" * 16); f.close()
PY
rc=0; "$IMGDEDUP" deploy --from "$WORK/repo-bad" --cache "$WORK/c4" -o "$WORK/o4" -q b.raw 2> "$WORK/e6" || rc=$?
check "damaged source: exit 1" [ "$rc" = 1 ]
check "damaged source: OUT.part removed" [ ! -e "$WORK/o4.part" ]
truncate -s 4M "$WORK/repo-bad/b.raw"
rc=0; "$IMGDEDUP" deploy --from "$WORK/repo-bad" --cache "$WORK/c4" -o "$WORK/o5" -q b.raw 2> "$WORK/e7" || rc=$?
check "source smaller than the image: exit 1" [ "$rc" = 1 ]
check "source smaller: OUT.part removed" [ ! -e "$WORK/o5.part" ]
rc=0; "$IMGDEDUP" deploy --from "http://127.0.0.1:9" --index "$REPO/.imgdedup" --cache "$WORK/c4" -o "$WORK/o6" -q b.raw 2> "$WORK/e8" || rc=$?
check "unreachable source: exit 1" [ "$rc" = 1 ]
check "unreachable source: OUT.part kept for a re-run" [ -e "$WORK/o6.part" ]
echo "all hostile deploy tests passed"
