#!/usr/bin/env bash
# imgdedup serve --record and --prefetch (over nginx): a record of the
# blocks three reads touched, then --prefetch of that record on an empty
# cache fetches those blocks with no client reading anything.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit qemu-io
serve_corpus
nginx_start "$REPO"

serve_start rec --from "$NGINX_URL" --cache "$WORK/cache-rec" --record "$WORK/boot.profile" base.raw
for r in "0 65536" "4194304 131072" "8388608 4096"; do
  qemu-io -r -f raw -c "read ${r% *} ${r#* }" "$(serve_uri rec base.raw)" >/dev/null || fail "qemu-io read $r"
done
serve_stop rec
check "--record wrote a profile" test -s "$WORK/boot.profile"
nginx_log_reset
serve_start pre --from "$NGINX_URL" --cache "$WORK/cache-pre" --prefetch "$WORK/boot.profile" base.raw
want=$(python3 - "$REF" <<'PY'
import hashlib, sys
d = open(sys.argv[1], "rb").read()
blocks = set()
for off, n in ((0, 65536), (4194304, 131072), (8388608, 4096)):
    for b in range(off // 4096, (off + n) // 4096):
        blk = d[b * 4096:(b + 1) * 4096]
        if blk.count(0) != 4096:
            blocks.add(hashlib.sha256(blk).digest())
print(len(blocks) * 4096)
PY
)
for _ in $(seq 100); do [ "$(nginx_file_bytes base.raw)" -ge "$want" ] && break; sleep 0.1; done
serve_stop pre
check "--prefetch: no client read" test "$(serve_stat pre reads)" = 0
check "--prefetch: fetched the recorded blocks ($want bytes) ahead" test "$(serve_stat pre bytes_fetched)" -ge "$want"
echo "PASS test_serve_prefetch"
