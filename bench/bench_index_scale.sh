#!/usr/bin/env bash
# What a cron run of the index costs when little changed, at two sizes
# (docs/scale.md):
#  - map on a synthetic index (bench/gen_index.c) of N images x B blocks:
#    first run, one image added, nothing changed, one image removed; wall
#    time, peak RSS and index bytes read and written (/proc/PID/io, through
#    /usr/bin/time's children: rchar/wchar of the map process);
#  - scan of a real repository of small image files (N x 256 KiB) after one
#    image added, ten changed, one removed: the same figures.
# INDEX_SIZES="IMAGES:BLOCKS ..." and SCAN_SIZES="IMAGES ..." override.
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/.." && pwd)
D=$BENCH_DIR/index-scale; mkdir -p "$D"
build=$(dirname "$IMGDEDUP")
gen=$build/bench/gen_index
mkdir -p "$(dirname "$gen")"
cc -O2 -std=c11 -D_GNU_SOURCE -I"$root/lib" "$root/bench/gen_index.c" "$build/libimgdedup.a" \
   $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$gen"

# measure LABEL CMD...: one run; prints "LABEL: S s, RSS MiB, read R MB, written W MB"
# (rchar/wchar: bytes through read(2)/write(2), images included for scan;
# the block table's runs are searched through mmap, which rchar does not
# count: the runs' sizes are in the map figures' written column when made)
measure() {
  local label=$1; shift
  python3 - "$D/io.json" "$@" <<'PY'
import json, os, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.time()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
# wait without reaping, so that the exited process's I/O counters can be read
os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
elapsed = time.time() - t
with open(f"/proc/{p.pid}/io") as f:
    io = dict(l.split(": ") for l in f.read().split("\n") if l)
if p.wait():
    sys.exit(f"bench: {cmd} failed")
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"s": elapsed, "rss_kb": ru.ru_maxrss,
           "rchar": int(io.get("rchar", 0)), "wchar": int(io.get("wchar", 0))}, open(out, "w"))
PY
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%s: %.2f s, peak RSS %d MiB, read %.1f MB, written %.1f MB" % (sys.argv[2], d["s"], d["rss_kb"]//1024, d["rchar"]/1e6, d["wchar"]/1e6))' "$D/io.json" "$label"
}

for size in ${INDEX_SIZES:-1000:65536 10000:4096}; do
  n=${size%%:*} b=${size##*:}
  R=$D/map-n$n-b$b; idx=$R/.imgdedup
  if [ ! -f "$idx/without-1/catalog" ]; then
    rm -rf "$R"; mkdir -p "$R"
    GEN_INDEX_WITHOUT=1 "$gen" "$idx" "$n" "$b" 10 >/dev/null
    cp "$idx/catalog" "$idx/catalog.all"
  fi
  rm -rf "$idx/maps" "$idx/blocktable"
  cp "$idx/without-1/catalog" "$idx/catalog"
  measure "map, $n x $b, first run ($((n - 1)) images)" "$IMGDEDUP" map -q "$R"
  cp "$idx/catalog.all" "$idx/catalog"
  measure "map, $n x $b, one image added" "$IMGDEDUP" map -q "$R"
  measure "map, $n x $b, nothing changed" "$IMGDEDUP" map -q "$R"
  cp "$idx/without-1/catalog" "$idx/catalog"
  measure "map, $n x $b, one image removed" "$IMGDEDUP" map -q "$R"
done

# a real repository: N small ext-less raw images from one family
for n in ${SCAN_SIZES:-1000 10000}; do
  R=$D/scan-n$n
  rm -rf "$R"; mkdir -p "$R"
  python3 - "$R" "$n" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
base = [rnd.randbytes(4096) for _ in range(64)]
for i in range(n):
    blocks = list(base)
    for k in rnd.sample(range(64), 8):   # 8 blocks of its own
        blocks[k] = rnd.randbytes(4096)
    with open(os.path.join(root, "img%05d.raw" % i), "wb") as f:
        f.write(b"".join(blocks))
PY
  find "$R" -type f -exec touch -d '-1 minute' {} +
  measure "scan, $n images, first run" "$IMGDEDUP" scan -q "$R"
  head -c 262144 /dev/urandom > "$R/new.raw"; touch -d '-1 minute' "$R/new.raw"
  measure "scan, $n images, one image added" "$IMGDEDUP" scan -q "$R"
  for i in $(seq 0 9); do
    f=$R/$(printf 'img%05d.raw' $((i * 7)))
    head -c 4096 /dev/urandom | dd of="$f" bs=4096 seek=3 conv=notrunc 2>/dev/null
    touch -d '-1 minute' "$f"
  done
  measure "scan, $n images, ten images changed" "$IMGDEDUP" scan -q "$R"
  rm "$R/new.raw"
  measure "scan, $n images, one image removed" "$IMGDEDUP" scan -q "$R"
  measure "scan, $n images, nothing changed" "$IMGDEDUP" scan -q "$R"
done
