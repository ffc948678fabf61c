#!/usr/bin/env bash
# bench_eviction.sh - cache gc by value against plain LRU on one node.
#
# A repository of corpus-like images (ext4 images of /usr/share files, made
# as tests/e2e/lib.sh's mkext4 does): three families, each a base and
# versions that add files to it, so members of a family share most of
# their content.  One seeded sequence of STEPS events, each a deploy
# (imgdedup deploy --force: a hit still reads the cached copy) or a boot
# (imgdedup serve, a guest's first reads of the image: the first 6 MiB,
# with qemu-io, leaving a partial image in the cache), of an image drawn
# with skewed popularity (families 0.5/0.3/0.2, newer versions more
# popular, bursts of rollouts), is replayed twice against nginx on
# 127.0.0.1, with a cache smaller than the images' union: after every
# event `cache gc --max-size BUDGET` runs, once with --policy value (the
# default), once with --policy lru.  Reported: bytes fetched (the JSON's
# bytes_fetched of every deploy and boot), per image and in total, for
# both policies, and their ratio; one run, both policies on the same
# sequence.
#   IMGDEDUP=build/imgdedup bench/bench_eviction.sh
#   STEPS=60 BUDGET_PERCENT=35 SEED=7
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
export IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
STEPS=${STEPS:-60}
BUDGET_PERCENT=${BUDGET_PERCENT:-35}
SEED=${SEED:-7}
for c in nbdkit qemu-io mkfs.ext4 nginx; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || { echo "bench_eviction: $c missing: skipped"; exit 0; }
done
export TMPDIR=${BENCH_DIR:-/var/tmp/imgdedup-bench}
mkdir -p "$TMPDIR"
source "$top/tests/e2e/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)

R=$WORK/repo
T=$WORK/trees
mkdir -p "$R" "$T"
# family NAME BASE_DIRS... -- ADDED_DIR_PER_VERSION...: NAME-v1 holds the
# base, NAME-v2 the base and the first addition, and so on
family() {
  local name=$1 v=1 d
  shift
  local tree=$T/$name
  mkdir -p "$tree"
  while [ "$1" != -- ]; do cp -r "/usr/share/$1" "$tree/"; shift; done
  shift
  mkext4 "$R/$name-v$v.raw" 48 "$tree"
  for d in "$@"; do
    v=$((v + 1))
    cp -r "/usr/share/$d" "$tree/"
    mkext4 "$R/$name-v$v.raw" 48 "$tree"
  done
}
echo "== building the repository"
family web perl5 zoneinfo -- xml groff alsa
family db postgresql tcltk -- python-wheels maven-repo mime
family desk X11 qemu -- fonts
age_files "$R"
"$IMGDEDUP" scan -q "$R"
"$IMGDEDUP" map -q "$R"
nginx_start "$R"
URL=$NGINX_URL
mapfile -t IMAGES < <(cd "$R" && ls *.raw)

# the images' disk sizes and the cache budget
sum=0
for i in "${IMAGES[@]}"; do sum=$((sum + $(du -B1 "$R/$i" | cut -f1))); done
BUDGET=$((sum * BUDGET_PERCENT / 100))
echo "== ${#IMAGES[@]} images, $((sum >> 20)) MiB on disk together; cache budget $((BUDGET >> 20)) MiB"

# the sequence: "kind image" lines
python3 - "$SEED" "$STEPS" "${IMAGES[@]}" > "$WORK/trace" <<'PY'
import random, sys
seed, steps, images = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
r = random.Random(seed)
fams = {}
for i in images:
    fams.setdefault(i.rsplit("-v", 1)[0], []).append(i)
names = sorted(fams, key=lambda f: {"web": 0, "db": 1, "desk": 2}.get(f, 3))
fw = [0.5, 0.3, 0.2][:len(names)]
out = []
while len(out) < steps:
    f = r.choices(names, fw)[0]
    mem = sorted(fams[f], key=lambda i: int(i.rsplit("-v", 1)[1].split(".")[0]))
    w = [k + 1 for k in range(len(mem))]          # newer versions more popular
    burst = 3 if r.random() < 0.2 else 1          # a rollout: the same image on several VMs
    img = r.choices(mem, w)[0]
    for _ in range(burst):
        out.append(("boot" if r.random() < 0.35 else "deploy", img))
for kind, img in out[:steps]:
    print(kind, img)
PY

# replay POLICY: one "policy kind image bytes_fetched" line per event
replay() {
  local policy=$1 kind img c=$WORK/cache-$1 n=0 f
  while read -r kind img; do
    n=$((n + 1))
    if [ "$kind" = deploy ]; then
      "$IMGDEDUP" deploy --from "$URL" --cache "$c" --force --json "$img" > "$WORK/ev.json"
      f=$(json_get "$WORK/ev.json" bytes_fetched)
    else
      serve_start boot --from "$URL" --cache "$c" "$img"
      qemu-io -r -f raw -c "read 0 6M" "$(serve_uri boot "$img")" > /dev/null
      serve_stop boot
      f=$(serve_stat boot bytes_fetched)
    fi
    "$IMGDEDUP" cache gc --max-size "$BUDGET" --policy "$policy" -q "$c" 2> /dev/null
    [ "$("$IMGDEDUP" cache ls --json "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["disk_bytes"])')" -le "$BUDGET" ] ||
      fail "$policy: the cache is over budget after event $n"
    echo "$policy $kind $img $f"
  done < "$WORK/trace"
}
echo "== replaying $STEPS events with each policy"
replay value > "$WORK/value.log"
replay lru > "$WORK/lru.log"
echo "== bytes fetched (one run, SEED=$SEED, STEPS=$STEPS, budget $BUDGET_PERCENT% of the images)"
python3 - "$WORK/value.log" "$WORK/lru.log" "$WORK/trace" <<'PY'
import collections, sys
def load(p):
    by, n = collections.Counter(), collections.Counter()
    for line in open(p):
        _, kind, img, f = line.split()
        by[img] += int(f)
    return by
v, l = load(sys.argv[1]), load(sys.argv[2])
events = collections.Counter(line.split()[1] for line in open(sys.argv[3]))
kinds = collections.Counter(line.split()[0] for line in open(sys.argv[3]))
print("| image | events | value (KiB) | LRU (KiB) | value / LRU |")
print("|---|---:|---:|---:|---:|")
for img in sorted(events):
    ratio = f"{v[img] / l[img]:.2f}" if l[img] else ("1.00" if not v[img] else "inf")
    print(f"| {img} | {events[img]} | {v[img] // 1024} | {l[img] // 1024} | {ratio} |")
tv, tl = sum(v.values()), sum(l.values())
print(f"| **total** ({kinds['deploy']} deploys, {kinds['boot']} boots) | {sum(events.values())} | "
      f"{tv // 1024} | {tl // 1024} | {tv / tl:.2f} |")
PY
