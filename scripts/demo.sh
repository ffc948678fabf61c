#!/usr/bin/env bash
# demo.sh - the whole job on an embedded default (run it as `make demo`):
# build a small repository of real ext4 images from files already on this
# machine, index it, show the similarity matrix, write block maps, and deploy
# one image through a node cache, then serve another over NBD and read part
# of it with a real NBD client.
set -euo pipefail
IMGDEDUP=${IMGDEDUP:-$(pwd)/build/imgdedup}
DEMO=${DEMO_DIR:-$(pwd)/build/demo}
SRC=${DEMO_SOURCE:-/usr/share}
export TZ=UTC LC_ALL=C

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO/trees" "$DEMO/repo" "$DEMO/node"

say "1. A repository of real ext4 images made from $SRC"
# Three overlapping slices of the same sorted file list, as an image
# repository would have: a base, a v2 with some files added and one edited,
# and a sibling that shares only part of the base.
find "$SRC" -xdev -type f -readable -size -2M 2>/dev/null | sort > "$DEMO/files.txt"
python3 - "$DEMO" <<'PY'
import os, sys
demo = sys.argv[1]
files = [l.rstrip("\n") for l in open(os.path.join(demo, "files.txt"))]
sizes, chosen, total = [], [], 0
for f in files:                     # take up to 60 MiB of files, in order
    try: s = os.path.getsize(f)
    except OSError: continue
    chosen.append(f); total += s
    if total > 60 << 20: break
n = len(chosen)
slices = {"base": chosen[: n * 6 // 10],
          "base-v2": chosen[: n * 7 // 10],
          "sibling": chosen[n * 3 // 10:]}
for name, fl in slices.items():
    with open(os.path.join(demo, name + ".list"), "w") as out:
        out.write("\n".join(fl) + "\n")
PY
for t in base base-v2 sibling; do
  mkdir -p "$DEMO/trees/$t"
  # cp --parents keeps the paths; errors on unreadable files are ignored
  xargs -a "$DEMO/$t.list" -d '\n' cp --parents -t "$DEMO/trees/$t" 2>/dev/null || true
done
printf 'demo release 2 (edited)\n' > "$DEMO/trees/base-v2/VERSION"
mb() { du -sm --apparent-size "$1" | cut -f1; }
for t in base base-v2 sibling; do
  size=$(( $(mb "$DEMO/trees/$t") * 13 / 10 + 24 ))
  inodes=$(( $(find "$DEMO/trees/$t" | wc -l) + 4096 ))
  E2FSPROGS_FAKE_TIME=1735689600 mkfs.ext4 -q -F -b 4096 -T default -N "$inodes" \
    -U 1b4e28ba-2fa1-11d2-883f-0016d3cca427 -E hash_seed=1b4e28ba-2fa1-11d2-883f-0016d3cca427 \
    -d "$DEMO/trees/$t" "$DEMO/repo/$t.img" "${size}M"
done
rm -rf "$DEMO/trees"
if command -v qemu-img >/dev/null; then
  qemu-img convert -f raw -O qcow2 "$DEMO/repo/base.img" "$DEMO/repo/base.qcow2"
fi
ls -lsh "$DEMO/repo"

say "2. Index it: per-block SHA-256, incremental"
run "$IMGDEDUP" scan "$DEMO/repo"
run "$IMGDEDUP" ls "$DEMO/repo"
echo "(a second scan reads nothing:)"
run "$IMGDEDUP" scan --json "$DEMO/repo"

say "3. Similarity (jaccard over distinct non-zero blocks)"
run "$IMGDEDUP" similarity --format csv "$DEMO/repo"
run "$IMGDEDUP" similarity --metric containment --format csv "$DEMO/repo"
run "$IMGDEDUP" similarity --format svg -o "$DEMO/similarity.svg" "$DEMO/repo"
echo "heatmap: $DEMO/similarity.svg"
echo "best cache seed for each image:"
run "$IMGDEDUP" similarity --top 1 "$DEMO/repo"

say "4. Block maps"
run "$IMGDEDUP" map --json "$DEMO/repo"

say "5. Deploy on a node: base.img first (empty cache), then base-v2.img through the cache"
run "$IMGDEDUP" deploy --from "$DEMO/repo" --cache "$DEMO/node/cache" -o "$DEMO/node/base.img" base.img
run "$IMGDEDUP" deploy --from "$DEMO/repo" --cache "$DEMO/node/cache" -o "$DEMO/node/base-v2.img" base-v2.img
cmp "$DEMO/repo/base-v2.img" "$DEMO/node/base-v2.img" && echo "deployed base-v2.img is byte-identical to the repository's"
echo "(base-v2.img again, now that the cache holds it: nothing is fetched; as JSON, for scripts)"
run "$IMGDEDUP" deploy --from "$DEMO/repo" --cache "$DEMO/node/cache" -o "$DEMO/node/base-v2-again.img" --json base-v2.img

say "6. Serve the repository over NBD (every image an export): blocks fetched when read, shared ones read from the cache"
if command -v nbdkit >/dev/null && command -v qemu-io >/dev/null && command -v nbdcopy >/dev/null &&
   [ -f "$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so" ]; then
  SOCK=$DEMO/node/serve.sock
  serve_bg() { # starts serve in the background; returns once the export answers
    printf '$ %s &\n' "$IMGDEDUP serve --all --from $DEMO/repo --cache $DEMO/node/cache --socket $SOCK $*"
    "$IMGDEDUP" serve --all --from "$DEMO/repo" --cache "$DEMO/node/cache" --socket "$SOCK" "$@" &
    SERVE_PID=$!
    for _ in $(seq 100); do
      nbdinfo --size "nbd+unix:///sibling.img?socket=$SOCK" >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    echo "serve did not start" >&2; return 1
  }
  serve_bg
  echo "(every image of the catalog is an export, named by its id:)"
  printf '$ %s\n' "nbdinfo --list nbd+unix:///?socket=$SOCK | grep export="
  nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep export=
  echo "(a VM would boot from it now: qemu ... -drive file=nbd+unix:///sibling.img?socket=$SOCK,format=raw)"
  echo "(reading the first 8 MiB of the disk, as a booting guest reads its beginning first:)"
  run qemu-io -r -f raw -c "read 0 8M" "nbd+unix:///sibling.img?socket=$SOCK"
  echo "(stopping the server prints what the reads cost:)"
  kill -INT "$SERVE_PID"; wait "$SERVE_PID"
  echo "(again, a full copy with nbdcopy: what was fetched stays in the cache; as JSON:)"
  serve_bg --json
  run nbdcopy "nbd+unix:///sibling.img?socket=$SOCK" "$DEMO/node/sibling-over-nbd.img"
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID"
  cmp "$DEMO/repo/sibling.img" "$DEMO/node/sibling-over-nbd.img" &&
    echo "the copy read over NBD is byte-identical to the repository's sibling.img"
  rm -f "$DEMO/node/sibling-over-nbd.img"
else
  echo "(skipped: nbdkit, libnbd-bin or qemu-utils missing; scripts/install-deps installs them)"
fi
echo
echo "demo done: repository $DEMO/repo, node $DEMO/node"
