#!/usr/bin/env bash
# check.sh DESTDIR PREFIX - what `make install DESTDIR=DESTDIR PREFIX=PREFIX`
# left is usable from outside the tree: every file in place, the header
# self-contained (strict C11 and C++), and programs built with nothing but
# `pkg-config ... libimgdedup` compile, link and run.  make install-check.
set -euo pipefail
dest=$1 prefix=$2
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-cc} CXX=${CXX:-c++} PKG_CONFIG=${PKG_CONFIG:-pkg-config}
fail() { echo "install-check: $*" >&2; exit 1; }

root=$dest$prefix
for f in bin/imgdedup lib/libimgdedup.a include/imgdedup.h share/man/man1/imgdedup.1 \
         lib/pkgconfig/libimgdedup.pc; do
  [ -f "$root/$f" ] || fail "$prefix/$f was not installed"
done
# The .pc file names where the files will live, not the staging directory.
grep -qx "prefix=$prefix" "$root/lib/pkgconfig/libimgdedup.pc" ||
  fail "libimgdedup.pc does not say prefix=$prefix"

# A staged install: pkg-config finds the .pc under DESTDIR and puts DESTDIR
# in front of its paths (PKG_CONFIG_SYSROOT_DIR), as for any staged package.
export PKG_CONFIG_PATH=$root/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$dest
$PKG_CONFIG --exists libimgdedup || fail "pkg-config does not find libimgdedup"
[ "$($PKG_CONFIG --modversion libimgdedup)" = "$(sed -n 's/^#define IDD_VERSION "\(.*\)"/\1/p' "$root/include/imgdedup.h")" ] ||
  fail "libimgdedup.pc's version differs from IDD_VERSION"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The header alone: strict C11 without _GNU_SOURCE, and C++.
# shellcheck disable=SC2046
$CC -std=c11 -pedantic -Wall -Wextra -Werror $($PKG_CONFIG --cflags libimgdedup) \
  "$here/strerror.c" -o "$tmp/strerror" $($PKG_CONFIG --libs libimgdedup)
out=$("$tmp/strerror")
[ "$out" = corrupt ] || fail "strerror printed '$out', expected 'corrupt'"
# shellcheck disable=SC2046
$CXX -std=c++11 -pedantic -Wall -Wextra -Werror $($PKG_CONFIG --cflags libimgdedup) \
  "$here/header.cc" -o "$tmp/header" $($PKG_CONFIG --libs libimgdedup)
"$tmp/header" || fail "the C++ program failed"
# shellcheck disable=SC2046
$CXX -std=c++11 -pedantic -Wall -Wextra -Werror -DIDD_STATIC_LINKING_ONLY \
  $($PKG_CONFIG --cflags libimgdedup) "$here/header.cc" -o "$tmp/header-static" \
  $($PKG_CONFIG --libs libimgdedup)
# The stable tier keeps internal layouts out of reach.
# shellcheck disable=SC2046
if $CC -std=c11 -c $($PKG_CONFIG --cflags libimgdedup) "$here/opaque.c" -o "$tmp/opaque.o" \
     2>/dev/null; then
  fail "a block list's layout is visible without IDD_STATIC_LINKING_ONLY"
fi

# Beyond the error functions the static library needs its dependencies, the
# packages libimgdedup.pc lists as Requires.private (shared libraries here:
# `pkg-config --static` would also want their own static dependencies, which
# Debian's -dev packages do not bring).  Read an index the installed
# imgdedup wrote.
deps=$($PKG_CONFIG --print-requires-private libimgdedup | awk '{print $1}' | tr '\n' ' ')
[ -n "$deps" ] || fail "libimgdedup.pc lists no Requires.private"
# shellcheck disable=SC2046,SC2086
$CC -std=c11 -Wall -Wextra -Werror $($PKG_CONFIG --cflags libimgdedup) "$here/catalog.c" \
  -o "$tmp/catalog" $($PKG_CONFIG --libs libimgdedup $deps) -pthread -lm
mkdir "$tmp/repo"
head -c 65536 /dev/urandom > "$tmp/repo/a.raw"
"$root/bin/imgdedup" scan -q "$tmp/repo"
out=$("$tmp/catalog" "$tmp/repo/.imgdedup")
[ "$out" = "a.raw raw 16" ] || fail "catalog printed '$out', expected 'a.raw raw 16'"
if "$tmp/catalog" "$tmp/none" 2>"$tmp/err"; then fail "catalog of a missing index succeeded"; fi
grep -q "not found" "$tmp/err" || fail "missing index: $(cat "$tmp/err")"
echo "install-check: installed files, the header (C11, C++), programs built through pkg-config: ok"
