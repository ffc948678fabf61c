#!/usr/bin/env bash
# similarity at scale on synthetic indexes written directly by
# bench/gen_index.c (docs/similarity.md, docs/performance.md):
#  - the exact matrix (--no-cache) of 1,000 images x 262,144 blocks (1 TB at
#    4 KiB) and of 10,000 images x 16,384 blocks; a cached re-run; the cache
#    brought up to date after one image is added and after one is removed;
#  - --top K of 100,000 images x 4,096 blocks without the matrix, and its
#    recall against the exact top K of a random sample (bench/sim_recall.c,
#    which also checks every reported value of the sample is exact).
# Wall time and peak RSS, medians of $RUNS runs (3 by default).
# SIM_SIZES="IMAGES:BLOCKS ...", TOP_SIZES="IMAGES:BLOCKS ...", TOP_K,
# TOP_SAMPLE override.  Block lists are read once first (page cache), as in
# a cron run after scan.
source "$(dirname "$0")/lib.sh"
RUNS=${SIM_RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
D=$BENCH_DIR/sim; mkdir -p "$D"
build=$(dirname "$IMGDEDUP")
mkdir -p "$build/bench"
# built here, not by the Makefile: benchmark tools linked against the library
for tool in gen_index sim_recall; do
  cc -O2 -std=c11 -D_GNU_SOURCE -I"$root/lib" "$root/bench/$tool.c" "$build/libimgdedup.a" \
     $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$build/bench/$tool"
done
gen=$build/bench/gen_index

# index N B: generate once (with a catalog less its last image); prints its dir
index() {
  local n=$1 b=$2 r=$D/n$1-b$2
  if [ ! -f "$r/.imgdedup/without-1/catalog" ]; then
    rm -rf "$r"
    /usr/bin/time -f '%e' -o "$D/gen.time" env GEN_INDEX_WITHOUT=1 "$gen" "$r/.imgdedup" "$n" "$b" 10 >/dev/null
    cp "$r/.imgdedup/catalog" "$r/.imgdedup/catalog.all"
    echo "generated $n images x $b blocks in $(cat "$D/gen.time") s ($(du -sh "$r/.imgdedup/blocks" | cut -f1) of block lists)" >&2
  fi
  find "$r/.imgdedup/blocks" -type f -exec cat {} + > /dev/null
  echo "$r"
}

# measure LABEL SETUP CMD...: SETUP (a function, untimed) then CMD, $RUNS
# times; prints the median wall time and the median peak RSS
measure() {
  local label=$1 setup=$2 i; shift 2
  : > "$D/runs"
  for ((i = 0; i < RUNS; i++)); do
    $setup
    /usr/bin/time -f '%e %M %U %S' -o "$D/run.time" "$@" > /dev/null || { echo "bench: $* failed" >&2; return 1; }
    awk '{print $1, $2, $3 + $4}' "$D/run.time" >> "$D/runs"
  done
  local t m c
  median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  t=$(awk '{print $1}' "$D/runs" | median)
  m=$(awk '{print $2}' "$D/runs" | median)
  c=$(awk '{print $3}' "$D/runs" | median)
  # CPU time (user + system) too: on a shared machine it varies less than wall time
  echo "$label: $t s, CPU $c s, peak RSS $((m / 1024)) MiB (median of $RUNS: $(awk '{printf "%s ", $1}' "$D/runs")s; load $(cut -d' ' -f1 /proc/loadavg))"
}

nothing() { :; }
for size in ${SIM_SIZES:-1000:262144 10000:16384}; do
  n=${size%%:*} b=${size##*:}
  R=$(index "$n" "$b"); I=$R/.imgdedup
  cp "$I/catalog.all" "$I/catalog"
  sim=("$IMGDEDUP" similarity -q --index "$I" -o "$D/out.csv" "$R")
  sim() { "${sim[@]}"; }
  measure "similarity --no-cache, $n x $b" nothing "${sim[@]}" --no-cache
  measure "  cached re-run (csv of $n x $n)" nothing "${sim[@]}"
  # the cache of n-1 images, then the n-th added; the cache of n, then one removed
  cache_less_one() { cp "$I/without-1/catalog" "$I/catalog"; sim >/dev/null; cp "$I/catalog.all" "$I/catalog"; }
  cache_all_less_one() { cp "$I/catalog.all" "$I/catalog"; sim >/dev/null; cp "$I/without-1/catalog" "$I/catalog"; }
  measure "  one image added (its row computed)" cache_less_one "${sim[@]}"
  measure "  one image removed (its row dropped)" cache_all_less_one "${sim[@]}"
  cp "$I/catalog.all" "$I/catalog"
  echo "  cache file $(du -h "$I/similarity" | cut -f1)"
done

K=${TOP_K:-5}
for size in ${TOP_SIZES:-100000:4096}; do
  n=${size%%:*} b=${size##*:}
  R=$(index "$n" "$b"); I=$R/.imgdedup
  cp "$I/catalog.all" "$I/catalog"
  measure "similarity --top $K, $n x $b" nothing \
    "$IMGDEDUP" similarity -q --top "$K" --index "$I" -o "$D/top.csv" "$R"
  echo "  $("$build/bench/sim_recall" "$I" "$K" "$D/top.csv" "${TOP_SAMPLE:-200}" 1)"
done
