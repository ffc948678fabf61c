#!/usr/bin/env bash
# What a cron run of `pack` costs when little changed (docs/performance.md,
# "Pack at scale"): a real repository of N small raw images from one
# family (N x 256 KiB: 64 shared blocks, 8 of each image's own), packed;
# then one image added, nothing changed, one image removed.  For each: wall
# time, peak RSS, bytes through read(2)/write(2) (rchar/wchar of the pack
# process: images included, mmap'd runs not), and pack's own counters
# (maps_read, lists_read, index_bytes_written).  Single runs: times include
# fsync latency and vary; the byte counts do not.  Then what a sharded digest
# table would have rewritten for the same added image: the shards its new
# digests fall in, from the real digests of the run it wrote.
# With BASELINE_IMGDEDUP set (an older build), its pack runs the same steps
# on a copy, and the ratios are printed.  PACK_SCALE_IMAGES="1000 ..." sets N,
# PACK_SCALE_OWN the blocks of each image's own (8; at most 64).
source "$(dirname "$0")/lib.sh"
D=$BENCH_DIR/pack-scale; mkdir -p "$D"

measure() { # LABEL OUTJSON CMD...: one run; prints the figures, keeps them in $D/io.json
  local label=$1 out=$2; shift 2
  python3 - "$D/io.json" "$out" "$@" <<'PY'
import json, os, resource, subprocess, sys, time
io_out, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.time()
with open(out, "w") as f:
    p = subprocess.Popen(cmd, stdout=f)
# wait without reaping, so that the exited process's I/O counters can be read
os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
elapsed = time.time() - t
with open(f"/proc/{p.pid}/io") as f:
    io = dict(l.split(": ") for l in f.read().split("\n") if l)
if p.wait():
    sys.exit(f"bench: {cmd} failed")
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"s": elapsed, "rss_kb": ru.ru_maxrss,
           "rchar": int(io.get("rchar", 0)), "wchar": int(io.get("wchar", 0))}, open(io_out, "w"))
PY
  python3 - "$D/io.json" "$out" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
try:
    p = json.load(open(sys.argv[2]))
except ValueError:
    p = {}
extra = "".join(f", {k} {p[k]}" for k in ("added", "removed", "maps_read", "lists_read",
                                          "index_bytes_written", "runs") if k in p)
print("%s: %.2f s, peak RSS %d MiB, read %.1f MB, written %.2f MB%s" %
      (sys.argv[3], d["s"], d["rss_kb"] // 1024, d["rchar"] / 1e6, d["wchar"] / 1e6, extra))
PY
  cp "$D/io.json" "$out.io"
}

# series BIN TAG: pack, one image added, nothing changed, one image removed
series() {
  local bin=$1 tag=$2
  local R=$D/$tag-n$n
  rm -rf "$R"; cp -a "$D/repo-n$n" "$R"
  measure "pack ($tag), $n images, first run" "$D/$tag-first.json" "$bin" pack --json -q "$R"
  cp "$D/new.raw" "$R/new.raw"
  "$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
  measure "pack ($tag), $n images, one image added" "$D/$tag-add.json" "$bin" pack --json -q "$R"
  [ "$tag" != this ] || cp "$(ls -d "$R"/.imgdedup/pack/runs/* | sort | tail -n 1)" "$D/this-add.run"
  measure "pack ($tag), $n images, nothing changed" "$D/$tag-none.json" "$bin" pack --json -q "$R"
  rm "$R/img00003.raw"
  "$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
  measure "pack ($tag), $n images, one image removed" "$D/$tag-rm.json" "$bin" pack --json -q "$R"
}

for n in ${PACK_SCALE_IMAGES:-1000}; do
  R=$D/repo-n$n
  rm -rf "$R"; mkdir -p "$R"
  python3 - "$R" "$n" "$D/new.raw" "${PACK_SCALE_OWN:-8}" <<'PY'
import os, random, sys
root, n, new, own = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rnd = random.Random(1)
base = [rnd.randbytes(4096) for _ in range(64)]
def image(path, own):
    blocks = list(base)
    for k in rnd.sample(range(64), own):
        blocks[k] = rnd.randbytes(4096)
    with open(path, "wb") as f:
        f.write(b"".join(blocks))
for i in range(n):
    image(os.path.join(root, "img%05d.raw" % i), own)
image(new, min(2 * own, 64))
PY
  find "$R" "$D/new.raw" -type f -exec touch -d '-1 minute' {} +
  "$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
  series "$IMGDEDUP" this
  # a sharded table of the same entries: the shards the added image's new
  # digests (the run that pack wrote for them) fall in are rewritten whole
  python3 - "$D/this-add.run" "$D/this-add.json" <<'PY'
import json, sys
data, add = open(sys.argv[1], "rb").read()[32:-32], json.load(open(sys.argv[2]))
digests = [data[i:i + 32] for i in range(0, len(data), 40)]
entries = add["blocks"]
run_bytes = len(data) + 64
print("digest index entries written for the image added: one run of %d bytes (%d entries); "
      "index files in all %.1f KB (run, frame table, view, manifest)" %
      (run_bytes, len(digests), add["index_bytes_written"] / 1e3))
for bits in (8, 12, 16):
    touched = len({int.from_bytes(d[:4], "big") >> (32 - bits) for d in digests})
    shards = 1 << bits
    print("  a table of %d shards instead: %d shards touched, %.1f KB of %.1f KB rewritten" %
          (shards, touched, touched / shards * entries * 40 / 1e3, entries * 40 / 1e3))
PY
  if [ -n "${BASELINE_IMGDEDUP:-}" ]; then
    series "$BASELINE_IMGDEDUP" baseline
    for step in add none rm; do
      python3 - "$D/baseline-$step.json.io" "$D/this-$step.json.io" "$step" <<'PY'
import json, sys
b, t = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
r = lambda k: b[k] / t[k] if t[k] else float("inf")
print("baseline / this, %s: time %.1fx, read %.1fx, written %.1fx, peak RSS %.1fx" %
      (sys.argv[3], r("s"), r("rchar"), r("wchar"), r("rss_kb")))
PY
    done
  fi
done
