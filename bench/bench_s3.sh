#!/usr/bin/env bash
# bench_s3.sh - the object store and peers.
#  1. deploy of a corpus image from OpenStack Swift (s3api, SigV4) against the
#     same deploy from nginx: empty cache, and with the previous release
#     cached; bytes and requests (imgdedup's counters, checked against a
#     counting proxy in front of Swift and nginx's access log), time;
#     medians of RUNS.  Also scan and publish over the store.
#  2. a simulated rack: N nodes (separate caches, one machine), each deploying
#     after the ones before it with all of them as --peer (their caches
#     served by nginx): bytes pulled from the repository per node, for the
#     same image on every node and for a mix of images.  Needs deploy --peer.
#   IMGDEDUP=build/imgdedup RUNS=3 bench/bench_s3.sh [TARGET.raw CACHED.raw]
#   PARTS=rack bench/bench_s3.sh   (only the rack; PARTS=store: only the store)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
IMGDEDUP=${IMGDEDUP:-$top/build/imgdedup}
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-/work/corpus/images}
TARGET=${1:-debian12-minbase-v2.raw}
CACHED=${2:-debian12-minbase.raw}
RACK_IMAGES=(debian12-minbase.raw debian12-minbase-v2.raw debian12-web.raw debian12-buildd.raw)
PARTS=${PARTS:-store rack}
source "$top/tests/e2e/nginx.sh"
source "$top/tests/e2e/swift.sh"
if [ ! -f "$CORPUS/$TARGET" ] || [ ! -f "$CORPUS/$CACHED" ]; then
  echo "bench_s3: no corpus at $CORPUS (see /work/shared/corpus/README.md); skipped"
  exit 0
fi

B=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/idd-bench-s3.XXXXXX")
PROXY_PID=
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  nginx_stop
  swift_stop
  rm -rf "$B"
}
trap cleanup EXIT
mkdir -p "$B/repo"
for f in "$TARGET" "$CACHED" "${RACK_IMAGES[@]}"; do
  [ -e "$B/repo/$f" ] && continue
  [ -f "$CORPUS/$f" ] || continue
  ln "$CORPUS/$f" "$B/repo/$f" 2>/dev/null || cp --sparse=always "$CORPUS/$f" "$B/repo/$f"
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

echo "== index (scan + map, local)"
"$IMGDEDUP" scan -q "$B/repo"
"$IMGDEDUP" map -q "$B/repo"

store_part() {
echo "== the store: Swift on 127.0.0.1, the repository uploaded"
swift_start
swift_mb bench
t0=$(now)
for f in "$TARGET" "$CACHED"; do swift_put "$B/repo/$f" "bench/repo/$f"; done
t1=$(now)
echo "upload of 2 images with curl: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
# scan over the store (a fresh index each run), then publish
SCAN_T=()
for i in $(seq "$RUNS"); do
  rm -rf "$B/sidx"
  t0=$(now)
  "$IMGDEDUP" scan -q --index "$B/sidx" s3://bench/repo
  t1=$(now)
  SCAN_T+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')")
done
"$IMGDEDUP" map -q --index "$B/sidx" s3://bench/repo
t0=$(now)
"$IMGDEDUP" publish --json --index "$B/sidx" s3://bench/repo > "$B/pub.json"
t1=$(now)
PUB_T=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
t0=$(now)
"$IMGDEDUP" scan -q --index "$B/sidx" s3://bench/repo
t1=$(now)
RESCAN_T=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
mkdir -p "$B/lrepo"
for f in "$TARGET" "$CACHED"; do ln "$B/repo/$f" "$B/lrepo/$f"; done
t0=$(now)
"$IMGDEDUP" scan -q --index "$B/lidx" "$B/lrepo"
t1=$(now)
LSCAN_T=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')

declare -A T BYTES REQS
deploy_run() { # NAME SOURCE CACHE_TEMPLATE IMAGE [env...]
  local name=$1 src=$2 tmpl=$3 img=$4
  rm -rf "$B/c" "$B/out"
  if [ -n "$tmpl" ]; then cp -a --sparse=always "$tmpl" "$B/c"; fi
  sync
  local t0 t1
  t0=$(now)
  "$IMGDEDUP" deploy --from "$src" --cache "$B/c" -o "$B/out" --json -q "$img" > "$B/d.json"
  t1=$(now)
  cmp "$B/repo/$img" "$B/out"
  T[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') "
  BYTES[$name]+="$(( $(jget "$B/d.json" bytes_fetched) + $(jget "$B/d.json" bytes_index) )) "
  REQS[$name]+="$(jget "$B/d.json" requests) "
}
# the node cache holding CACHED, made once from nginx
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$B/cache0" -q "$CACHED"
for i in $(seq "$RUNS"); do
  deploy_run nginx_empty "$NGINX_URL" "" "$TARGET"
  deploy_run swift_empty s3://bench/repo "" "$TARGET"
  deploy_run nginx_cached "$NGINX_URL" "$B/cache0" "$TARGET"
  deploy_run swift_cached s3://bench/repo "$B/cache0" "$TARGET"
done
# cross-check the counters: nginx's log, and a counting proxy before Swift
nginx_log_reset
rm -rf "$B/c" "$B/out"; cp -a --sparse=always "$B/cache0" "$B/c"
"$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$B/c" -o "$B/out" --json -q "$TARGET" > "$B/n.json"
NGX_SEEN="$(nginx_bytes) bytes in $(nginx_requests) requests"
rm -f "$B/proxy.port"
python3 "$top/tests/e2e/s3proxy.py" --upstream "${SWIFT_URL#http://}" --port-file "$B/proxy.port" \
  --log "$B/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do [ -s "$B/proxy.port" ] && break; sleep 0.05; done
rm -rf "$B/c" "$B/out"; cp -a --sparse=always "$B/cache0" "$B/c"
AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$B/proxy.port") "$IMGDEDUP" deploy --from s3://bench/repo \
  --cache "$B/c" -o "$B/out" --json -q "$TARGET" > "$B/s.json"
SWIFT_SEEN="$(awk '{s += $4} END {print s + 0}' "$B/proxy.log") bytes in $(wc -l < "$B/proxy.log") requests"
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=

printf '\n%s, %s runs (medians); bytes = payload + index as imgdedup counts them\n' "$TARGET" "$RUNS"
printf '%-40s %14s %9s %9s\n' "deploy" "bytes" "requests" "seconds"
for name in nginx_empty swift_empty nginx_cached swift_cached; do
  case $name in
    nginx_empty) label="from nginx, empty cache";;
    swift_empty) label="from Swift (S3, SigV4), empty cache";;
    nginx_cached) label="from nginx, $CACHED cached";;
    swift_cached) label="from Swift, $CACHED cached";;
  esac
  printf '%-40s %14s %9s %9s\n' "$label" \
    "$(tr ' ' '\n' <<<"${BYTES[$name]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${REQS[$name]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${T[$name]}" | grep . | median)"
done
echo "cross-check, $CACHED cached: nginx's log: $NGX_SEEN (imgdedup: $(( $(jget "$B/n.json" bytes_fetched) + $(jget "$B/n.json" bytes_index) )) bytes, $(jget "$B/n.json" requests) requests)"
echo "cross-check, $CACHED cached: proxy before Swift: $SWIFT_SEEN (imgdedup: $(( $(jget "$B/s.json" bytes_fetched) + $(jget "$B/s.json" bytes_index) )) bytes, $(jget "$B/s.json" requests) requests)"
echo "scan of s3://bench/repo (2 images, fresh index): $(printf '%s\n' "${SCAN_T[@]}" | median) s median; the same tree on disk: $LSCAN_T s; rescan of the store (unchanged): $RESCAN_T s"
echo "publish of the index ($(jget "$B/pub.json" files) files, $(jget "$B/pub.json" bytes_uploaded) bytes): $PUB_T s"

}
nginx_start "$B/repo"
[[ " $PARTS " == *" store "* ]] && store_part

# ---- 2. the rack ----
[[ " $PARTS " == *" rack "* ]] || exit 0
if ! "$IMGDEDUP" deploy --help 2>&1 | grep -q -- --peer; then
  echo
  echo "rack: skipped: deploy has no --peer option yet"
  exit 0
fi
rack() { # LABEL IMAGE... : node k deploys IMAGE[k] with nodes 1..k-1 as peers
  local label=$1; shift
  local imgs=("$@") k peers=() total=0 union=()
  printf '\n%s\n' "$label"
  printf '%-6s %-26s %14s %14s %14s %9s %9s %8s\n' node image "from repository" "from peers" "distinct new" \
    "repo req" "peer req" seconds
  rm -rf "$B"/node-*
  for ((k = 0; k < ${#imgs[@]}; k++)); do
    local img=${imgs[$k]} t0 t1
    nginx_log_reset
    t0=$(now)
    "$IMGDEDUP" deploy --from "$NGINX_URL" --cache "$B/node-$k" "${peers[@]}" --json -q "$img" > "$B/r.json"
    t1=$(now)
    local rreq preq
    rreq=$(awk '$2 !~ /^\/peers\// && $2 !~ /\/\.imgdedup\// {n++} END {print n + 0}' "$NGINX_LOG")
    preq=$(awk '$2 ~ /^\/peers\// && $2 !~ /\/index$/ {n++} END {print n + 0}' "$NGINX_LOG")
    cmp "$B/repo/$img" "$(jget "$B/r.json" output)"
    # the distinct blocks of img that no earlier node holds: the least the repository must send
    local newb
    newb=$(python3 - "$B/repo/$img" "${union[@]}" <<'PY'
import hashlib, sys
def ds(p):
    s = set()
    with open(p, "rb") as f:
        while True:
            b = f.read(4096)
            if not b:
                break
            if b.count(0) != len(b):
                s.add(hashlib.sha256(b.ljust(4096, b"\0")).digest())
    return s
have = set()
for p in sys.argv[2:]:
    have |= ds(p)
print(len(ds(sys.argv[1]) - have) * 4096)
PY
)
    local got
    got=$(jget "$B/r.json" bytes_fetched)
    total=$((total + got))
    printf '%-6s %-26s %14s %14s %14s %9s %9s %8.2f\n' "$((k + 1))" "$img" "$got" \
      "$(jget "$B/r.json" bytes_from_peers)" "$newb" "$rreq" "$preq" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
    mkdir -p "$WEB/node-$k"
    rm -rf "$WEB/node-$k"; ln -s "$B/node-$k" "$WEB/node-$k"
    peers+=(--peer "$NGINX_URL/peers/node-$k")
    union+=("$B/repo/$img")
  done
  echo "repository total: $total bytes"
}
# the peers' caches under the same nginx (its root is the repository)
WEB=$B/repo/peers
mkdir -p "$WEB"
N=${RACK_NODES:-4}
same=()
for ((i = 0; i < N; i++)); do same+=("$TARGET"); done
rack "rack: $N nodes deploy $TARGET one after another, the earlier ones as peers" "${same[@]}"
mix=()
for f in "${RACK_IMAGES[@]}"; do [ -f "$B/repo/$f" ] && mix+=("$f"); done
rack "rack: ${#mix[@]} nodes deploy different images, the earlier ones as peers" "${mix[@]}"
