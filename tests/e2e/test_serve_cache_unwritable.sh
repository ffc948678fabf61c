#!/usr/bin/env bash
# imgdedup serve with a node cache that cannot keep what is fetched: the
# client still gets every verified byte (caching is best effort), the
# failures are counted in cache_write_errors and warned about once.
#  1. the cache on a file system that fills up during the read (a 1 MiB
#     tmpfs in a mount namespace of serve's own, the image 8 MiB);
#  2. a symlink where the image's partial file goes (never followed);
#  3. the cache directory removed after serve started, before the first
#     fetch.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/serve.sh"
for c in nbdkit nbdcopy nbdinfo unshare; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
BS=4096
mkdir -p "$REPO"
python3 - "$REPO/base.raw" <<'PY'
import random, sys
r = random.Random(5)
# 8 MiB: random blocks, every 16th block zero
d = bytearray(r.randbytes(8 << 20))
for b in range(0, len(d) // 4096, 16):
    d[b * 4096:(b + 1) * 4096] = bytes(4096)
open(sys.argv[1], "wb").write(d)
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
REF=$REPO/base.raw
read -r _ NEW _ _ < <(serve_expect "$REF" $BS)

# what every case checks: an exact read, no read error, the failures counted
# and one warning for all of them
read_exact_uncached() { # NAME CASE
  local name=$1 what=$2 warnings
  nbdcopy --no-extents "$(serve_uri "$name" base.raw)" "$WORK/$name.raw" 2> "$WORK/$name.copy.err" ||
    fail "$what: the read failed: $(cat "$WORK/$name.copy.err")"
  serve_stop "$name"
  cmp "$WORK/$name.raw" "$REF" || fail "$what: the read differs"
  check "$what: the read is exact, no read error" test "$(serve_stat "$name" read_errors)" = 0
  check "$what: blocks not cached are counted" test "$(serve_stat "$name" cache_write_errors)" -gt 0
  warnings=$(grep -c 'cannot keep fetched blocks' "$WORK/$name.err" || true)
  check "$what: one warning, not one per block" test "$warnings" = 1
  echo "ok: $what: $(serve_stat "$name" cache_write_errors) cache write errors, $(serve_stat "$name" blocks_filled) of $NEW blocks cached; $(grep -m1 'cannot keep' "$WORK/$name.err")"
}

# ---- 1. a full file system ---------------------------------------------------
# serve runs in a mount namespace of its own with the cache on a 1 MiB tmpfs
# (root: unshare -m; otherwise a user namespace maps the user to root)
UNSHARE=(unshare -m)
[ "$(id -u)" = 0 ] || UNSHARE=(unshare -r -m)
"${UNSHARE[@]}" true 2>/dev/null || fail "cannot make a mount namespace (${UNSHARE[*]})"
SMALL=$WORK/cache-small
mkdir -p "$SMALL"
cat > "$WORK/imgdedup-small-cache" <<EOF
#!/bin/bash
exec ${UNSHARE[*]} -- bash -c 'mount -t tmpfs -o size=1m tmpfs "\$0" && exec "\$@"' "$SMALL" "$IMGDEDUP" "\$@"
EOF
chmod +x "$WORK/imgdedup-small-cache"
REAL_IMGDEDUP=$IMGDEDUP
IMGDEDUP=$WORK/imgdedup-small-cache serve_start full --from "$REPO" --cache "$SMALL" base.raw
IMGDEDUP=$REAL_IMGDEDUP
read_exact_uncached full "full disk"
check "full disk: what fitted was cached" test "$(serve_stat full blocks_filled)" -gt 0 -a "$(serve_stat full blocks_filled)" -lt "$NEW"

# ---- 2. a symlink at the partial file's name ---------------------------------
LINKED=$WORK/cache-link
mkdir -p "$LINKED/images"
ln -s "$WORK/elsewhere" "$LINKED/images/base.raw.partial"
serve_start link --from "$REPO" --cache "$LINKED" base.raw
read_exact_uncached link "symlink at the partial file"
check "symlink at the partial file: not followed" test ! -e "$WORK/elsewhere"
check "symlink at the partial file: left as it was" test -L "$LINKED/images/base.raw.partial"

# ---- 3. the cache directory removed before the first fetch --------------------
GONE=$WORK/cache-gone
serve_start gone --from "$REPO" --cache "$GONE" base.raw
rm -rf "$GONE"
read_exact_uncached gone "cache directory removed"
echo "PASS test_serve_cache_unwritable"
