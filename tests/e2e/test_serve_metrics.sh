#!/usr/bin/env bash
# imgdedup serve --metrics: Prometheus text at http://ADDR:PORT/metrics while
# serving.  Real clients: nbdcopy reads the exports, curl scrapes, promtool
# (the prometheus package) validates the text.  Once the clients are done
# the scraped counters equal the --json counters serve prints when stopped
# (reads, bytes by origin, fetch requests, ...), the per-export series add
# up to the totals, and the histograms count every read.  Also: the
# listener is on loopback unless ADDR says otherwise, HEAD and a query
# string are answered, other paths and methods are refused (404, 405), an
# oversized request gets 431, an idle client does not keep others out, a
# port in use fails start-up with a clear message, and nothing listens once
# serve has stopped.  GET /estimate?image=ID... answers what `cache estimate
# --json` prints for the service's source and cache (checked byte for byte,
# and against a deploy: lacking nothing of an image deployed meanwhile), and
# refuses unknown images (404) and bad requests (400).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/serve.sh"
for c in nbdkit nbdcopy nbdinfo curl promtool; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done

REPO=$WORK/repo
mkdir -p "$REPO"
# a: 4 MiB, every other 4 KiB block zero; b: a with 5 blocks changed
python3 - "$REPO" <<'PY'
import random, sys
r = random.Random(11)
a = bytearray(4 << 20)
for off in range(0, len(a), 8192):
    a[off:off + 4096] = r.randbytes(4096)
open(sys.argv[1] + "/a.raw", "wb").write(a)
for blk in (2, 40, 300, 700, 1000):
    a[blk * 4096:(blk + 1) * 4096] = r.randbytes(4096)
open(sys.argv[1] + "/b.raw", "wb").write(a)
PY
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# metrics_serve NAME METRICS_PREFIX ARGS...: as serve_start (serve.sh), with
# --metrics PREFIX+PORT on a free port (another one when it was taken
# meanwhile); sets MPORT.
metrics_serve() {
  local name=$1 prefix=$2 try pid i
  shift 2
  SERVE_SOCK=$WORK/$name.sock
  for try in 1 2 3 4 5; do
    MPORT=$(free_port)
    "$IMGDEDUP" serve --socket "$SERVE_SOCK" --json --metrics "$prefix$MPORT" "$@" \
      > "$WORK/$name.json" 2> "$WORK/$name.err" &
    pid=$!
    echo "$pid" > "$WORK/$name.pid"
    SERVE_PIDS+=("$pid")
    for i in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      if [ -S "$SERVE_SOCK" ] && nbdinfo --size "nbd+unix:///?socket=$SERVE_SOCK" >/dev/null 2>&1; then
        return 0
      fi
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "serve $name: not ready after 30 s: $(cat "$WORK/$name.err")"
    wait "$pid" || true
    grep -q 'Address already in use' "$WORK/$name.err" || fail "serve $name: $(cat "$WORK/$name.err")"
  done
  fail "serve $name: no free metrics port in 5 tries"
}

scrape() { curl -sS --max-time 30 "http://127.0.0.1:$MPORT/metrics"; }
# metric FILE NAME{LABELS}: the value of one sample
metric() {
  awk -v k="$2" '$1 == k { print $2; found = 1 } END { if (!found) print "missing" }' "$1"
}
# sum_metric FILE PREFIX: the sum of the samples whose name{labels} starts with PREFIX
sum_metric() {
  awk -v p="$2" 'index($1, p) == 1 { s += $2 } END { printf "%d\n", s }' "$1"
}
eq() { [ "$1" = "$2" ] || { echo "  $1 != $2" >&2; return 1; }; }

# ---- a cold cache, no pack: zero, cache and repository origins ----
metrics_serve s1 "" --from "$REPO" --cache "$WORK/cache1" --no-pack --readahead 0 a.raw b.raw
# nothing read yet: valid text all the same
scrape > "$WORK/m0.txt"
check "metrics before any read pass promtool" promtool check metrics < "$WORK/m0.txt"
check "no read counted before any read" eq "$(metric "$WORK/m0.txt" imgdedup_reads_total)" 0
check "the listener of --metrics PORT is on loopback" python3 - "$MPORT" <<'PY'
import sys
port = int(sys.argv[1])
found = []
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    addr, p = f[1].split(":")
    if int(p, 16) == port and f[3] == "0A":
        found.append(addr)
print("listening on", found)
sys.exit(0 if found == ["0100007F"] else 1)
PY

nbdcopy "$(serve_uri s1 a.raw)" "$WORK/a.copy"
nbdcopy "$(serve_uri s1 b.raw)" "$WORK/b.copy"
check "a read through serve is the image" cmp "$WORK/a.copy" "$REPO/a.raw"
check "b read through serve is the image" cmp "$WORK/b.copy" "$REPO/b.raw"
curl -sS -i --max-time 30 "http://127.0.0.1:$MPORT/metrics" > "$WORK/m1.http"
check "the answer is text/plain version 0.0.4" \
  grep -qi '^Content-Type: text/plain; version=0.0.4' "$WORK/m1.http"
# what the cache's images take on disk settles once written back
sync "$WORK/cache1/images"/*.partial
scrape > "$WORK/m1.txt"
CACHE_ALLOC=$(python3 -c 'import os,sys; print(sum(os.stat(os.path.join(sys.argv[1], f)).st_blocks * 512 for f in os.listdir(sys.argv[1]) if f.endswith(".partial")))' "$WORK/cache1/images")
check "metrics after the reads pass promtool" promtool check metrics < "$WORK/m1.txt"
# scraping changes no counter
scrape > "$WORK/m2.txt"
check "a second scrape says the same" \
  cmp <(grep -v '^imgdedup_cache_bytes ' "$WORK/m1.txt") <(grep -v '^imgdedup_cache_bytes ' "$WORK/m2.txt")
serve_stop s1
J=$WORK/s1.json
M=$WORK/m1.txt
cat "$J"
check "reads_total = reads" eq "$(metric $M imgdedup_reads_total)" "$(serve_stat s1 reads)"
check "some reads were counted" [ "$(metric $M imgdedup_reads_total)" -gt 0 ]
check "served bytes = bytes_read = both images" eq "$(metric $M imgdedup_served_bytes_total)" \
  "$(serve_stat s1 bytes_read)"
check "bytes_read is both images" eq "$(serve_stat s1 bytes_read)" $((2 * (4 << 20)))
check "origin zero = bytes_zero" eq "$(metric $M 'imgdedup_read_bytes_total{origin="zero"}')" \
  "$(serve_stat s1 bytes_zero)"
check "origin cache = bytes_from_cache" eq "$(metric $M 'imgdedup_read_bytes_total{origin="cache"}')" \
  "$(serve_stat s1 bytes_from_cache)"
check "b read its shared blocks from the cache" [ "$(serve_stat s1 bytes_from_cache)" -gt 0 ]
check "origin peer = bytes_from_peers" eq "$(metric $M 'imgdedup_read_bytes_total{origin="peer"}')" \
  "$(serve_stat s1 bytes_from_peers)"
check "origin repository = bytes_fetched (no pack)" \
  eq "$(metric $M 'imgdedup_read_bytes_total{origin="repository"}')" "$(serve_stat s1 bytes_fetched)"
check "origin pack is 0 with --no-pack" eq "$(metric $M 'imgdedup_read_bytes_total{origin="pack"}')" 0
check "fetch_requests_total = requests" eq "$(metric $M imgdedup_fetch_requests_total)" \
  "$(serve_stat s1 requests)"
check "blocks_filled_total = blocks_filled" eq "$(metric $M imgdedup_blocks_filled_total)" \
  "$(serve_stat s1 blocks_filled)"
check "read_errors_total = read_errors = 0" eq "$(metric $M imgdedup_read_errors_total)" \
  "$(serve_stat s1 read_errors)"
check "cache_write_errors_total = cache_write_errors" \
  eq "$(metric $M imgdedup_cache_write_errors_total)" "$(serve_stat s1 cache_write_errors)"
check "no fetch errors, no verify failures" eq \
  "$(metric $M imgdedup_fetch_errors_total) $(sum_metric $M imgdedup_verify_failures_total)" "0 0"
check "nothing in flight once the clients are done" eq "$(metric $M imgdedup_fetches_in_flight)" 0
check "two exports" eq "$(metric $M imgdedup_exports)" 2
# per export: each image read whole, the exports add up to the totals
check "export a served its size" \
  eq "$(metric $M 'imgdedup_export_served_bytes_total{export="a.raw"}')" $((4 << 20))
check "export b served its size" \
  eq "$(metric $M 'imgdedup_export_served_bytes_total{export="b.raw"}')" $((4 << 20))
check "exports' reads add up" eq "$(sum_metric $M 'imgdedup_export_reads_total{')" \
  "$(metric $M imgdedup_reads_total)"
for o in zero cache repository; do
  check "exports' $o bytes add up" eq \
    "$(awk -v o="origin=\"$o\"}" 'index($1, "imgdedup_export_read_bytes_total{") == 1 && index($1, o) { s += $2 } END { printf "%d\n", s }' $M)" \
    "$(metric $M "imgdedup_read_bytes_total{origin=\"$o\"}")"
done
check "b's fetches are a few blocks" [ "$(metric $M 'imgdedup_export_fetch_requests_total{export="b.raw"}')" -le 5 ]
check "the read histogram counts every read" \
  eq "$(metric $M imgdedup_read_duration_seconds_count) $(metric $M 'imgdedup_read_duration_seconds_bucket{le="+Inf"}')" \
  "$(metric $M imgdedup_reads_total) $(metric $M imgdedup_reads_total)"
check "the fetch histogram counted the fetches" [ "$(metric $M imgdedup_fetch_duration_seconds_count)" -gt 0 ]
check "the exports' read histograms add up" \
  eq "$(sum_metric $M 'imgdedup_export_read_duration_seconds_count{')" "$(metric $M imgdedup_reads_total)"
check "histogram buckets are cumulative" awk '
  /^imgdedup_read_duration_seconds_bucket/ { if ($2 + 0 < last) exit 1; last = $2 + 0 } END { exit 0 }' $M
check "two partial images in the cache" eq "$(metric $M imgdedup_partial_images)" 2
check "cache_bytes is what the cache's images take on disk" eq "$(metric $M imgdedup_cache_bytes)" \
  "$CACHE_ALLOC"
check "nothing listens on the metrics port after stop" bash -c "! curl -s --max-time 5 http://127.0.0.1:$MPORT/metrics >/dev/null"

# ---- with a pack, on every address: the pack origin; HTTP behaviour ----
"$IMGDEDUP" pack -q "$REPO"
metrics_serve s2 "0.0.0.0:" --from "$REPO" --cache "$WORK/cache2" --readahead 0 a.raw
check "--metrics 0.0.0.0:PORT listens on every address" python3 - "$MPORT" <<'PY'
import sys
port = int(sys.argv[1])
found = [l.split()[1].split(":")[0] for l in open("/proc/net/tcp").read().splitlines()[1:]
         if int(l.split()[1].split(":")[1], 16) == port and l.split()[3] == "0A"]
sys.exit(0 if found == ["00000000"] else 1)
PY
nbdcopy "$(serve_uri s2 a.raw)" "$WORK/a2.copy"
check "a read from the pack is the image" cmp "$WORK/a2.copy" "$REPO/a.raw"
# an idle client that never sends its request is dropped after a while;
# a scrape behind it is still answered
python3 - "$MPORT" "$WORK/idle.done" <<'PY' &
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(60)
try:
    got = s.recv(100)   # b"" once the server drops it
except OSError:
    got = b"timeout"
open(sys.argv[2], "w").write(repr(got))
PY
idle=$!
sleep 0.5
scrape > "$WORK/m3.txt"
wait $idle
check "the idle client was dropped without an answer" eq "$(cat "$WORK/idle.done")" "b''"
check "a scrape behind an idle client is answered" promtool check metrics < "$WORK/m3.txt"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$@"; }
check "HEAD /metrics: 200" eq "$(code -I "http://127.0.0.1:$MPORT/metrics")" 200
check "/metrics?x=1: 200" eq "$(code "http://127.0.0.1:$MPORT/metrics?x=1")" 200
check "another path: 404" eq "$(code "http://127.0.0.1:$MPORT/")" 404
check "/metricsx: 404" eq "$(code "http://127.0.0.1:$MPORT/metricsx")" 404
check "POST: 405" eq "$(code -X POST -d x "http://127.0.0.1:$MPORT/metrics")" 405
check "a request of 20 KB of headers: 431" \
  eq "$(code -H "X-Big: $(head -c 20000 /dev/zero | tr '\0' a)" "http://127.0.0.1:$MPORT/metrics")" 431
check "not HTTP: 400" python3 - "$MPORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"hello there\r\n\r\n")
got = s.recv(100)
print(got)
sys.exit(0 if got.startswith(b"HTTP/1.1 400 ") else 1)
PY
# ---- GET /estimate: what `cache estimate --json` says, live ----
EST="http://127.0.0.1:$MPORT/estimate"
cli_estimate() {
  "$IMGDEDUP" cache estimate --cache "$WORK/cache2" --from "$REPO" --json "$@"
}
curl -sS -D "$WORK/est.h" --max-time 30 "$EST?image=a.raw&image=b.raw&bandwidth=1000000" > "$WORK/est1.json"
cli_estimate --bandwidth 1000000 a.raw b.raw > "$WORK/cli1.json"
check "/estimate answers what cache estimate --json prints, byte for byte" \
  cmp "$WORK/cli1.json" "$WORK/est1.json"
check "... as JSON" grep -qi '^content-type: application/json' "$WORK/est.h"
check "... b.raw lacks bytes, and seconds = bytes_missing / bandwidth" python3 - "$WORK/est1.json" <<'PY'
import json, sys
v = {i["image"]: i for i in json.load(open(sys.argv[1]))["images"]}
b = v["b.raw"]
print(b)
sys.exit(0 if b["bytes_missing"] > 0 and abs(b["seconds"] - b["bytes_missing"] / 1e6) < 1e-5 else 1)
PY
"$IMGDEDUP" deploy -q --from "$REPO" --cache "$WORK/cache2" b.raw
check "after a deploy of b.raw into the node cache, the service says it lacks nothing of it" \
  python3 - "$EST?image=b.raw" <<'PY'
import json, sys, urllib.request
v = json.load(urllib.request.urlopen(sys.argv[1], timeout=30))["images"]
print(v)
sys.exit(0 if [i["image"] for i in v] == ["b.raw"] and v[0]["bytes_missing"] == 0
         and v[0]["seconds"] is None else 1)
PY
check "a percent-encoded id is decoded" \
  eq "$(curl -sS --max-time 30 "$EST?image=b%2Eraw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["image"])')" b.raw
check "HEAD /estimate: 200" eq "$(code -I "$EST?image=a.raw")" 200
check "an image not in the catalog: 404" eq "$(code "$EST?image=nosuch.raw")" 404
check "... naming it" bash -c "curl -sS --max-time 30 '$EST?image=nosuch.raw' | grep -q nosuch.raw"
check "an id outside the source: 400" eq "$(code "$EST?image=..%2Fetc%2Fpasswd")" 400
check "no image: 400" eq "$(code "$EST")" 400
check "a bad bandwidth: 400" eq "$(code "$EST?image=a.raw&bandwidth=fast")" 400
check "an unknown parameter: 400" eq "$(code "$EST?image=a.raw&x=1")" 400
check "an encoded NUL: 400" eq "$(code "$EST?image=a%00.raw")" 400
check "65 images: 400" eq "$(code "$EST?$(printf 'image=a.raw&%.0s' $(seq 65))")" 400
check "metrics still answer after the estimates" promtool check metrics < <(scrape)
serve_stop s2
M=$WORK/m3.txt
check "origin pack = bytes_fetched" eq "$(metric $M 'imgdedup_read_bytes_total{origin="pack"}')" \
  "$(serve_stat s2 bytes_fetched)"
check "the pack delivered" [ "$(serve_stat s2 bytes_fetched)" -gt 0 ]
check "origin repository is 0 with a pack" \
  eq "$(metric $M 'imgdedup_read_bytes_total{origin="repository"}')" 0
check "s2: reads_total = reads" eq "$(metric $M imgdedup_reads_total)" "$(serve_stat s2 reads)"
check "s2: fetch_requests_total = requests" eq "$(metric $M imgdedup_fetch_requests_total)" \
  "$(serve_stat s2 requests)"

# ---- a metrics port in use: start-up fails, saying so ----
python3 - "$WORK/busy.port" <<'PY' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
PY
holder=$!
cleanup_fns+=("kill $holder")
for i in $(seq 100); do [ -s "$WORK/busy.port" ] && break; sleep 0.1; done
BUSY=$(cat "$WORK/busy.port")
rc=0
"$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache3" --socket "$WORK/s3.sock" --metrics "$BUSY" \
  a.raw > "$WORK/s3.out" 2> "$WORK/s3.err" || rc=$?
cat "$WORK/s3.err"
check "a metrics port in use fails start-up" [ "$rc" -ne 0 ]
check "the message names the address and the reason" \
  grep -qF "cannot listen on $BUSY (127.0.0.1 port $BUSY): Address already in use" "$WORK/s3.err"
check "nothing was served" bash -c "[ ! -s '$WORK/s3.out' ] && [ ! -e '$WORK/s3.sock' ]"
rc=0
"$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache3" --socket "$WORK/s3.sock" --metrics "::1:80" \
  a.raw 2> "$WORK/s4.err" || rc=$?
check "a bad metrics address fails start-up" bash -c "[ $rc -ne 0 ] && grep -q 'in brackets' '$WORK/s4.err'"
kill "$holder" 2>/dev/null || true
