#!/usr/bin/env bash
# similarity at scale on synthetic indexes written directly by
# bench/gen_index.c (docs/similarity.md): 1,000 images x 262,144 blocks
# (1 TB at 4 KiB) and 10,000 images x 16,384 blocks; wall time and peak RSS
# of a fresh computation (--no-cache) and of a cached re-run; then the map
# of the first synthetic family.  SIM_SIZES="IMAGES:BLOCKS ..." overrides.
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/.." && pwd)
D=$BENCH_DIR/sim; mkdir -p "$D"
build=$(dirname "$IMGDEDUP")
gen=$build/bench/gen_index
mkdir -p "$(dirname "$gen")"
# built here, not by the Makefile: a benchmark tool linked against the library
cc -O2 -std=c11 -D_GNU_SOURCE -I"$root/lib" "$root/bench/gen_index.c" "$build/libimgdedup.a" \
   $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$gen"

for size in ${SIM_SIZES:-1000:262144 10000:16384}; do
  n=${size%%:*} b=${size##*:}
  idx=$D/n$n-b$b/.imgdedup
  if [ ! -f "$idx/catalog" ]; then
    rm -rf "$D/n$n-b$b"
    /usr/bin/time -f '%e' -o "$D/gen.time" "$gen" "$idx" "$n" "$b" 10 >/dev/null
    echo "generated $n images x $b blocks in $(cat "$D/gen.time") s ($(du -sh "$idx" | cut -f1) of block lists)"
  fi
  # read the block lists once so the figure is CPU + page cache, like a re-run from cron
  cat "$idx"/blocks/* > /dev/null
  /usr/bin/time -f '%e %M' -o "$D/sim.time" "$IMGDEDUP" similarity -q --no-cache --index "$idx" \
      -o "$D/n$n.csv" "$D/n$n-b$b"
  read -r secs kb < "$D/sim.time"
  /usr/bin/time -f '%e %M' -o "$D/sim2.time" "$IMGDEDUP" similarity -q --index "$idx" \
      -o "$D/n$n.csv" "$D/n$n-b$b"
  read -r secs2 kb2 < "$D/sim2.time"
  echo "similarity, $n images x $b blocks: $secs s, peak RSS $((kb / 1024)) MiB (cached re-run: $secs2 s, $((kb2 / 1024)) MiB); cache file $(du -h "$idx/similarity" | cut -f1)"
done
