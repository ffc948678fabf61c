# lib.sh - sourced by the end-to-end tests.
set -euo pipefail
: "${IMGDEDUP:?}"
TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/idd-e2e.XXXXXX")
cleanup_fns=()
on_exit() { local f; for f in "${cleanup_fns[@]}"; do $f || true; done; rm -rf "$WORK"; }
trap on_exit EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# skip_script REASON: the script cannot run here (run-all.sh counts it as
# skipped, where an exit 0 without any named check counts as a failure)
skip_script() { echo "SKIP: $*"; exit 0; }
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }
# need_commands CMD...: each is on PATH (scripts/install-deps installs them)
need_commands() {
  local c
  for c in "$@"; do command -v "$c" >/dev/null || fail "$c missing (scripts/install-deps)"; done
}
# expect_status STATUS WHAT CMD...: CMD exits with STATUS, and with a message
# on stderr unless STATUS is 0 (kept in $WORK/e.out, $WORK/e.err)
expect_status() {
  local want=$1 what=$2 rc=0; shift 2
  "$@" > "$WORK/e.out" 2> "$WORK/e.err" || rc=$?
  [ "$rc" = "$want" ] || fail "$what: exit $rc, want $want ($(cat "$WORK/e.err"))"
  [ "$want" = 0 ] || [ -s "$WORK/e.err" ] || fail "$what: no message"
  echo "ok: $what: exit $rc: $(head -n 1 "$WORK/e.err")"
}
# fixture NAME BUILD: sets FIXTURE to the directory of a test fixture (a
# corpus built and indexed once, read-only for the tests), made by the
# function BUILD DIR the first time a script asks for NAME.  run-all.sh
# shares E2E_FIXTURES among its scripts, so the scripts a feature was split
# into pay for its setup once; a script run alone builds its own.
: "${E2E_FIXTURES:=$WORK/fixtures}"
fixture() {
  local name=$1 build=$2 lk
  FIXTURE=$E2E_FIXTURES/$name
  mkdir -p "$E2E_FIXTURES"
  exec {lk}> "$E2E_FIXTURES/$name.lock"
  flock "$lk"
  if [ ! -e "$FIXTURE.done" ]; then
    rm -rf "$FIXTURE" && mkdir -p "$FIXTURE"
    # not under || (that would turn errexit off inside BUILD): a failure
    # ends the script, and the fixture without its .done is built again
    "$build" "$FIXTURE"
    : > "$FIXTURE.done"
  fi
  exec {lk}>&-
}
# json_get FILE KEY -> value of a top-level key of the JSON object in FILE
json_get() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# mkext4 IMAGE SIZE_MB DIR: an ext4 image of DIR's files, 4 KiB blocks, deterministic
mkext4() {
  E2FSPROGS_FAKE_TIME=1735689600 mkfs.ext4 -q -F -b 4096 -T default -U 6b1b6c4e-1c2d-4b8f-9a0e-1f2e3d4c5b6a \
    -E hash_seed=6b1b6c4e-1c2d-4b8f-9a0e-1f2e3d4c5b6a -d "$3" "$1" "${2}M" >/dev/null
}
# age_files DIR: set the mtime of every file under DIR (the index excluded)
# ten seconds back, so that scan does not take them for racily clean (written
# within the timestamp granularity of its start: read again by the next run)
age_files() {
  find "$1" -path '*/.imgdedup' -prune -o -type f -exec touch -h -d "@$(( $(date +%s) - 10 ))" {} +
}
# missing_bytes A [B...]: bytes of the distinct non-zero 4 KiB blocks of image A
# that none of the images B holds (what a deploy of A must fetch with B cached)
missing_bytes() {
  python3 - "$@" <<'PY'
import hashlib, sys
def blocks(p):
    d = open(p, "rb").read()
    out = []
    for o in range(0, len(d), 4096):
        b = d[o:o + 4096]
        if b.count(0) == len(b):
            continue
        out.append((hashlib.sha256(b.ljust(4096, b"\0")).digest(), len(b)))
    return out
want = {}
for dg, n in blocks(sys.argv[1]):
    want.setdefault(dg, n)
have = set()
for p in sys.argv[2:]:
    have.update(dg for dg, _ in blocks(p))
print(sum(n for dg, n in want.items() if dg not in have))
PY
}
