#!/usr/bin/env bash
# A repository in an object store, end to end, against a real OpenStack
# Swift (s3api + tempauth) on 127.0.0.1: scan, map and publish from
# s3://BUCKET/PREFIX equal the same tree scanned on disk; incremental by
# ETag; deploy from the store byte-exact for every format, fetching exactly
# the distinct missing blocks (an independent python count, and the bytes a
# proxy in front of Swift saw); a wrong secret is one clear line and exit 1;
# throttling (503 SlowDown) and 500s are retried and the output is exact.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/swift.sh"
cleanup_fns+=(swift_stop stop_proxy)

BS=4096
REPO=$WORK/repo
T=$WORK/t
mkdir -p "$REPO/sub" "$T/t1" "$T/t2"

# ---- images: two related ext4 disks, repeats and holes, every container ----
cp -r /usr/share/common-licenses "$T/t1/lic"
cp -r /usr/share/common-licenses "$T/t2/lic"
head -c 2000000 /dev/urandom > "$T/t1/own.bin"
head -c 3000000 /dev/urandom > "$T/t2/own.bin"
mkext4 "$REPO/v1.raw" 16 "$T/t1"
mkext4 "$REPO/sub/v2.raw" 16 "$T/t2"
python3 - "$REPO/rep.raw" <<'PY'
import random, sys
r = random.Random(7)
blocks = [r.randbytes(4096) for _ in range(40)]
out = bytearray()
for i in range(300):
    out += bytes(4096) if i % 7 == 0 else blocks[i % 40]
out += b"tail" * 100          # a partial last block
open(sys.argv[1], "wb").write(out)
PY
qemu-img convert -c -O qcow2 "$REPO/v1.raw" "$REPO/c.qcow2"            # compressed clusters
qemu-img create -q -f qcow2 -b c.qcow2 -F qcow2 "$REPO/d.qcow2"       # an overlay on it
qemu-io -c "write -P 0x5a 1M 192k" -c "write -z 4M 64k" "$REPO/d.qcow2" >/dev/null
qemu-img convert -O vmdk -o subformat=streamOptimized "$REPO/sub/v2.raw" "$T/disk.vmdk"
(cd "$T" && tar cf "$REPO/x.ova" disk.vmdk)
cp "$REPO/rep.raw" "$T/inner.raw"
(cd "$T" && tar czf "$REPO/sub/y.tar.gz" inner.raw)
# references, by qemu-img (independent of imgdedup's readers)
qemu-img convert -O raw "$REPO/d.qcow2" "$T/d.ref"
qemu-img convert -O raw "$REPO/c.qcow2" "$T/c.ref"
qemu-img convert -O raw "$T/disk.vmdk" "$T/x.ref"

# ---- the store: listings of 3 keys a page, so every listing pages ----
SWIFT_MAX_LISTING=3 swift_start
swift_mb imgs
upload_tree() { # DIR PREFIX
  (cd "$1" && find . -type f | sed 's|^\./||' | sort) | while read -r f; do
    swift_put "$1/$f" "imgs/$2/$f"
  done
}
upload_tree "$REPO" repo
# not images, or not to be indexed: a text file, a "directory" marker, a stale index file
echo "hello" > "$T/readme.txt"
swift_put "$T/readme.txt" imgs/repo/readme.txt
swift_put /dev/null imgs/repo/empty-dir/
swift_put "$T/readme.txt" imgs/repo/.imgdedup/stale.raw
S3=s3://imgs/repo

# ---- scan: the store equals the same tree on disk ----
"$IMGDEDUP" scan --json --index "$WORK/idx" "$S3" > "$WORK/s1.json"
"$IMGDEDUP" scan --json --index "$WORK/lidx" "$REPO" > "$WORK/l1.json"
check "scan finds the 7 images (listing paged 3 keys at a time)" [ "$(json_get "$WORK/s1.json" images)" = 7 ]
for k in images blocks zero_blocks unique_blocks bytes_hashed; do
  check "scan $k as for the tree on disk" [ "$(json_get "$WORK/s1.json" $k)" = "$(json_get "$WORK/l1.json" $k)" ]
done
"$IMGDEDUP" ls --index "$WORK/idx" "$S3" > "$WORK/ls.s3"
"$IMGDEDUP" ls --index "$WORK/lidx" "$REPO" > "$WORK/ls.local"
check "ls identical" cmp "$WORK/ls.s3" "$WORK/ls.local"
check "block lists identical" diff <(ls "$WORK/idx/blocks") <(ls "$WORK/lidx/blocks")

# incremental: nothing read again; a changed object read again; a copy under a new key (same ETag) is a rename
"$IMGDEDUP" scan --json --index "$WORK/idx" "$S3" > "$WORK/s2.json"
check "rescan reads nothing" [ "$(json_get "$WORK/s2.json" scanned)/$(json_get "$WORK/s2.json" bytes_hashed)" = 0/0 ]
swift_put "$REPO/rep.raw" imgs/repo/moved/rep.raw
swift_s3 DELETE imgs/repo/rep.raw -o /dev/null
printf 'changed' | dd of="$REPO/sub/v2.raw" bs=1 seek=5000000 conv=notrunc status=none
swift_put "$REPO/sub/v2.raw" imgs/repo/sub/v2.raw
"$IMGDEDUP" scan --json --index "$WORK/idx" "$S3" > "$WORK/s3.json"
check "changed object read again, moved one recognised" \
  [ "$(json_get "$WORK/s3.json" scanned)/$(json_get "$WORK/s3.json" renamed)/$(json_get "$WORK/s3.json" bytes_hashed)" \
    = "1/1/$(python3 "$TESTS_DIR/blockhash.py" --summary $BS "$REPO/sub/v2.raw" | python3 -c 'import json,sys; j=json.load(sys.stdin); print((j["blocks"]-j["zero_blocks"])*4096)')" ]
"$IMGDEDUP" verify --deep -q --index "$WORK/idx" "$S3"
echo "ok: verify --deep re-reads every image from the store"
check "info and similarity read the local index of an s3:// REPO" \
  bash -c "'$IMGDEDUP' info --index '$WORK/idx' $S3 x.ova/disk.vmdk >/dev/null &&
           '$IMGDEDUP' similarity --index '$WORK/idx' $S3 >/dev/null"
check "an s3:// REPO without --index is refused" bash -c "! '$IMGDEDUP' scan -q $S3 2>/dev/null"

# ---- map and publish (catalog last, stale objects removed) ----
"$IMGDEDUP" map -q --index "$WORK/idx" "$S3"
"$IMGDEDUP" publish --json --index "$WORK/idx" "$S3" > "$WORK/p1.json"
nfiles=$(cd "$WORK/idx" && find . -type f ! -name lock ! -name publish-state ! -name '*.tmp.*' | wc -l)
check "publish uploads the index ($nfiles files), removes the stale object" \
  [ "$(json_get "$WORK/p1.json" uploaded)/$(json_get "$WORK/p1.json" deleted)" = "$nfiles/1" ]
"$IMGDEDUP" publish --json --index "$WORK/idx" "$S3" > "$WORK/p2.json"
check "publish again uploads nothing" [ "$(json_get "$WORK/p2.json" uploaded)" = 0 ]

# ---- deploy from the store, through a counting proxy ----
PROXY_PID=
stop_proxy() {
  if [ -n "${PROXY_PID:-}" ]; then
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
  fi
  PROXY_PID=
}
start_proxy() { # extra s3proxy.py arguments
  stop_proxy
  rm -f "$WORK/proxy.port" "$WORK/proxy.log"
  python3 "$TESTS_DIR/s3proxy.py" --upstream "${SWIFT_URL#http://}" --port-file "$WORK/proxy.port" \
    --log "$WORK/proxy.log" "$@" &
  PROXY_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/proxy.port" ] && break; sleep 0.05; done
  PROXY_URL=http://127.0.0.1:$(cat "$WORK/proxy.port")
}
data_bytes() { awk '$2 !~ /\/\.imgdedup\// && $1 == "GET" {s += $4} END {print s + 0}' "$WORK/proxy.log"; }


start_proxy
C1=$WORK/cache1
AWS_ENDPOINT_URL=$PROXY_URL "$IMGDEDUP" deploy --from "$S3" --cache "$C1" --json -q v1.raw > "$WORK/d1.json"
check "v1 byte-exact" cmp "$REPO/v1.raw" "$C1/images/v1.raw"
want=$(missing_bytes "$REPO/v1.raw")
check "v1 bytes_fetched = distinct non-zero blocks ($want)" [ "$(json_get "$WORK/d1.json" bytes_fetched)" = "$want" ]
check "v1: the proxy saw exactly those bytes" [ "$(data_bytes)" = "$want" ]
: > "$WORK/proxy.log"
AWS_ENDPOINT_URL=$PROXY_URL "$IMGDEDUP" deploy --from "$S3" --cache "$C1" --json -q sub/v2.raw > "$WORK/d2.json"
check "v2 byte-exact" cmp "$REPO/sub/v2.raw" "$(json_get "$WORK/d2.json" output)"
want=$(missing_bytes "$REPO/sub/v2.raw" "$REPO/v1.raw")
check "v2 fetches only what v1 lacks ($want bytes)" [ "$(json_get "$WORK/d2.json" bytes_fetched)" = "$want" ]
check "v2: the proxy saw exactly those bytes" [ "$(data_bytes)" = "$want" ]
check "v2: coalesced (requests < blocks fetched)" \
  [ "$(json_get "$WORK/d2.json" requests)" -lt "$((want / BS))" ]

# every format, byte-exact
deploy_cmp() { # ID REFERENCE
  AWS_ENDPOINT_URL=$PROXY_URL "$IMGDEDUP" deploy --from "$S3" --cache "$WORK/cache-f" -q -o "$WORK/out.raw" --force "$1"
  check "deploy $1 byte-exact" cmp "$WORK/out.raw" "$2"
}
deploy_cmp c.qcow2 "$T/c.ref"
deploy_cmp d.qcow2 "$T/d.ref"
deploy_cmp x.ova/disk.vmdk "$T/x.ref"
deploy_cmp sub/y.tar.gz/inner.raw "$REPO/rep.raw"
deploy_cmp moved/rep.raw "$REPO/rep.raw"

# ---- a wrong secret: one clear line, exit 1, the secret never printed ----
set +e
AWS_SECRET_ACCESS_KEY=S3CR3T-WRONG-x9 "$IMGDEDUP" deploy --from "$S3" --cache "$WORK/c-bad" -q v1.raw \
  > "$WORK/bad.out" 2> "$WORK/bad.err"
rc=$?
AWS_SECRET_ACCESS_KEY=S3CR3T-WRONG-x9 "$IMGDEDUP" scan -q --index "$WORK/idx-bad" "$S3" 2> "$WORK/bad2.err"
rc2=$?
set -e
cat "$WORK/bad.err"
check "wrong secret: exit 1" [ "$rc/$rc2" = 1/1 ]
check "wrong secret: one line on stderr" [ "$(wc -l < "$WORK/bad.err")" = 1 ]
check "wrong secret: names the bucket and key, says access denied" \
  grep -q "s3://imgs/repo/.imgdedup/entries/$(printf %s v1.raw | sha256sum | cut -d' ' -f1): access denied (HTTP 403" "$WORK/bad.err"
check "wrong secret: scan fails the same way" grep -q "s3://imgs: access denied" "$WORK/bad2.err"
check "the secret is never printed" bash -c "! grep -q S3CR3T '$WORK/bad.err' '$WORK/bad2.err' '$WORK/bad.out'"
set +e
"$IMGDEDUP" deploy --from s3://no-such-bucket/x --cache "$WORK/c-bad" -q v1.raw 2> "$WORK/nb.err"
rc=$?
set -e
check "a missing bucket: exit 1, said so" [ "$rc" = 1 ] && grep -q "no such bucket" "$WORK/nb.err"

# ---- throttling and errors: retried with backoff, output exact ----
start_proxy --skip 2 --slowdown 4 --fail500 3
AWS_ENDPOINT_URL=$PROXY_URL "$IMGDEDUP" deploy --from "$S3" --cache "$WORK/cache-t" --json \
  sub/v2.raw > "$WORK/t.json" 2> "$WORK/t.err"
check "throttled deploy byte-exact" cmp "$REPO/sub/v2.raw" "$(json_get "$WORK/t.json" output)"
check "throttled deploy: 7 retries" [ "$(json_get "$WORK/t.json" retries)" = 7 ]
check "throttling reported as such" grep -q "HTTP 503 SlowDown" "$WORK/t.err"
check "500s reported" grep -q "HTTP 500 InternalError" "$WORK/t.err"
want=$(missing_bytes "$REPO/sub/v2.raw")
check "throttled deploy fetched each missing block once" [ "$(json_get "$WORK/t.json" bytes_fetched)" = "$want" ]
stop_proxy

# ---- a pack of the s3:// REPO: published without the pack's own copies of
# block lists (blocks/ has them, no node reads them); deploy reads it ----
"$IMGDEDUP" pack -q --index "$WORK/idx" "$S3"
"$IMGDEDUP" publish -q --index "$WORK/idx" "$S3"
head_code() { swift_s3 HEAD "imgs/repo/.imgdedup/$1" -I -o /dev/null -w '%{http_code}'; }
view=$(cd "$WORK/idx" && ls pack/views | head -n 1)
data=$(cd "$WORK/idx" && ls pack/data/*.zpk | head -n 1)
kept=$(cd "$WORK/idx" && ls pack/lists | head -n 1)
check "publish uploads the pack's index, views and data" \
  [ "$(head_code pack/index)/$(head_code "pack/views/$view")/$(head_code "$data")" = 200/200/200 ]
check "publish leaves out the pack's copies of block lists (blocks/ has them)" \
  [ -n "$kept" ] && [ "$(head_code "pack/lists/$kept")/$(head_code "blocks/$kept")" = 404/200 ]
"$IMGDEDUP" deploy --from "$S3" --cache "$WORK/cache-pack" --json -q v1.raw > "$WORK/dp.json"
check "deploy through the published pack: byte-exact" cmp "$REPO/v1.raw" "$WORK/cache-pack/images/v1.raw"
echo "test_s3: all passed"
