#!/usr/bin/env bash
# Boot profiles by content, shared through the repository: serve --record
# writes each block's digest; `imgdedup profile publish` stores them in the
# index; serve of the image on an empty node prefetches them over nginx
# with no client reading; serve of a sibling never booted borrows that
# profile, restricted to the blocks it holds; an unrelated image and
# --no-profile prefetch nothing; `profile remove` takes it away.  Counts
# are checked against hashlib over the image files.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
for c in nbdkit nbdcopy qemu-io; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo T=$WORK/t BS=4096
mkdir -p "$REPO" "$T"
# real files (a tar of the licenses), random data and holes: 6 MiB
tar cf "$T/lic.tar" -C /usr/share common-licenses
python3 - "$T/lic.tar" "$REPO/base.raw" "$REPO/sib.raw" "$REPO/other.raw" <<'PY'
import random, sys
r = random.Random(7)
lic = open(sys.argv[1], "rb").read()[:3 << 20]
d = bytearray(r.randbytes(1 << 20) + lic + bytes(1 << 20))
d += bytes((6 << 20) - len(d))
open(sys.argv[2], "wb").write(d)
sys.argv.pop(1)
# the sibling: 30 blocks of its own, 10 of them inside the ranges booted
for b in r.sample(range(len(d) // 4096), 20) + list(range(2, 12)):
    d[b * 4096:(b + 1) * 4096] = r.randbytes(4096)
open(sys.argv[2], "wb").write(d)
open(sys.argv[3], "wb").write(r.randbytes(1 << 20))
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
nginx_start "$REPO"
RANGES="0:65536 1048576:131072 4194304:4096"

# digests of the booted ranges (in first-read order), and of each image
python3 - "$REPO" "$RANGES" "$WORK" <<'PY'
import hashlib, os, sys
repo, ranges, work = sys.argv[1], sys.argv[2].split(), sys.argv[3]
def digests(path):
    d = open(path, "rb").read()
    return [hashlib.sha256(d[i:i + 4096]).hexdigest() if d[i:i + 4096].count(0) != 4096 else None
            for i in range(0, len(d), 4096)]
base = digests(os.path.join(repo, "base.raw"))
order = []
for r in ranges:
    off, n = map(int, r.split(":"))
    for b in range(off // 4096, (off + n) // 4096):
        if base[b] and base[b] not in order:
            order.append(base[b])
open(os.path.join(work, "want.base"), "w").write("\n".join(order) + "\n")
for img in ("sib", "other"):
    have = set(x for x in digests(os.path.join(repo, img + ".raw")) if x)
    open(os.path.join(work, "want." + img), "w").write("%d\n" % sum(1 for x in order if x in have))
PY
WANT=$(wc -l < "$WORK/want.base")
WANT_SIB=$(cat "$WORK/want.sib")
WANT_OTHER=$(cat "$WORK/want.other")
[ "$WANT" -gt 20 ] && [ "$WANT_SIB" -gt 0 ] && [ "$WANT_SIB" -lt "$WANT" ] && [ "$WANT_OTHER" = 0 ] ||
  fail "test images: $WANT booted, $WANT_SIB in the sibling, $WANT_OTHER in the other"

serve_start rec --from "$NGINX_URL" --cache "$WORK/cache-rec" --record "$WORK/boot.profile" base.raw
for r in $RANGES; do
  qemu-io -r -f raw -c "read ${r%:*} ${r#*:}" "$(serve_uri rec base.raw)" >/dev/null || fail "qemu-io read $r"
done
serve_stop rec
check "--record writes each block's digest, in first-read order" \
  diff <(awk -F'\t' '!/^#/ && NF == 3 && !seen[$3]++ {print $3}' "$WORK/boot.profile") "$WORK/want.base"

out=$("$IMGDEDUP" profile publish "$WORK/boot.profile" base.raw "$REPO")
check "profile publish stores the distinct blocks read ($WANT)" test "$out" = "published the boot profile of base.raw: $WANT blocks"
check "... as an index file named by the image id" test -s "$REPO/.imgdedup/profiles/$(printf %s base.raw | sha256sum | cut -c1-64)"
rc=0; "$IMGDEDUP" profile publish "$WORK/boot.profile" nope.raw "$REPO" 2> "$WORK/e.err" || rc=$?
check "profile publish of an image not in the index fails (exit 1)" test "$rc" = 1
check "... saying so" grep -q "nope.raw: not an image of the index" "$WORK/e.err"
rc=0; "$IMGDEDUP" profile publish "$WORK/boot.profile" sib.raw "$REPO" 2> "$WORK/e.err" || rc=$?
check "profile publish of an image the file does not name fails (exit 1)" test "$rc" = 1
"$IMGDEDUP" verify -q "$REPO" || fail "verify with a profile published"
"$IMGDEDUP" scan -q "$REPO" && "$IMGDEDUP" map -q "$REPO"
check "scan and map keep the profiles" test -s "$REPO/.imgdedup/profiles/index"

# prefetch_of NAME IMAGE ARGS...: serve IMAGE on an empty cache, no client
# read, until nothing more arrives; prints the bytes fetched
prefetch_of() {
  local name=$1 img=$2 last=-1 now same=0; shift 2
  nginx_log_reset
  serve_start "$name" --from "$NGINX_URL" --cache "$WORK/cache-$name" "$@" "$img"
  for _ in $(seq 100); do
    now=$(awk -v u="/$img" '$2 == u {s += $4} END {print s + 0}' "$NGINX_LOG")
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
    [ "$same" -ge 3 ] && break
    last=$now; sleep 0.3
  done
  serve_stop "$name"
  [ "$(serve_stat "$name" reads)" = 0 ] || fail "$name: a client read"
}
prefetch_of own base.raw
check "its own profile: prefetched from the repository with no client read" \
  test "$(serve_stat own bytes_fetched)" -ge $((WANT * BS))
check "... saying so at start-up" grep -q "base.raw: prefetching $WANT blocks of the boot profile of base.raw" "$WORK/own.err"
check "... fetching the profile list and the profile from the index" \
  test "$(grep -c ' /.imgdedup/profiles/' "$NGINX_LOG")" = 2

prefetch_of sib sib.raw
check "a sibling never booted borrows it: the $WANT_SIB blocks of it that it holds" \
  grep -q "sib.raw: prefetching $WANT_SIB blocks of the boot profile of base.raw" "$WORK/sib.err"
check "... fetched ahead of any read" test "$(serve_stat sib bytes_fetched)" -ge $((WANT_SIB * BS))
serve_start sibread --from "$NGINX_URL" --cache "$WORK/cache-sib" sib.raw
nbdcopy "$(serve_uri sibread sib.raw)" "$WORK/sib.out"
serve_stop sibread
check "... and reads byte for byte as the sibling" cmp "$WORK/sib.out" "$REPO/sib.raw"

prefetch_of other other.raw
check "an unrelated image prefetches nothing" test "$(serve_stat other bytes_fetched)" = 0
prefetch_of off base.raw --no-profile
check "--no-profile prefetches nothing" test "$(serve_stat off bytes_fetched)" = 0
check "... and asks the index for no profile" test "$(grep -c ' /.imgdedup/profiles/' "$NGINX_LOG")" = 0

out=$("$IMGDEDUP" profile remove base.raw "$REPO")
check "profile remove" test "$out" = "removed the boot profile of base.raw"
prefetch_of gone base.raw
check "... after which nothing is prefetched" test "$(serve_stat gone bytes_fetched)" = 0
rc=0; "$IMGDEDUP" profile remove base.raw "$REPO" 2>/dev/null || rc=$?
check "removing it again fails (exit 1)" test "$rc" = 1
