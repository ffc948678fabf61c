#!/usr/bin/env bash
# bench_pack.sh - the pack on the corpus: build time of the whole corpus's
# pack, a re-run, an incremental run after one image was added; its size
# against the images on disk; then what a node holding
# debian12-minbase.raw transfers to get debian12-web.raw and
# debian12-minbase-v2.raw from a private nginx on 127.0.0.1: the missing
# blocks from the pack, the same as raw ranges of the image (what deploy
# fetches without a pack), imgdedup deploy, and casync extract --seed.
# Bytes and requests from nginx's access log, medians of RUNS runs.
# Skipped when the corpus is absent.
#   IMGDEDUP=build/imgdedup RUNS=3 bench/bench_pack.sh
source "$(dirname "$0")/lib.sh"
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/tests/e2e/nginx.sh"
C=$(find_corpus) || { echo "bench_pack: no corpus (set CORPUS), skipped"; exit 0; }
for f in debian12-web.raw debian12-minbase.raw debian12-minbase-v2.raw; do
  [ -f "$C/$f" ] || { echo "bench_pack: $C/$f missing, skipped"; exit 0; }
done
command -v casync >/dev/null || echo "bench_pack: casync not installed (scripts/install-deps --bench): no casync rows"
D=$BENCH_DIR/pack; rm -rf "$D"; mkdir -p "$D/repo"
trap 'nginx_stop; rm -rf "$D"' EXIT
# copies, not hard links: a link count change elsewhere would change the
# files' ctime under the scan
for f in "$C"/*; do cp --reflink=auto --sparse=always "$f" "$D/repo/"; done
R=$D/repo; I=$R/.imgdedup
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"

echo "== building the pack of the whole corpus ($(ls "$R" | wc -l) files, $(nproc) cores), median of $RUNS"
pack_fresh() { rm -rf "$I/pack"; "$IMGDEDUP" pack -q "$R"; }
t_build=$(median_time pack_fresh)
"$IMGDEDUP" pack --json "$R" > "$D/p.json"
t_rerun=$(median_time "$IMGDEDUP" pack -q "$R")
j() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
blocks=$(j "$D/p.json" blocks); pbytes=$(j "$D/p.json" pack_bytes); raw=$(j "$D/p.json" raw_bytes)
ondisk=$(du -B1 -c "$R"/*.raw "$R"/*.qcow2 "$R"/*.ova "$R"/*.box 2>/dev/null | tail -1 | cut -f1)
# the pack's index: manifest, runs, frame tables
idx_bytes=$(find "$I/pack/index" "$I/pack/runs" "$I/pack/data" -type f ! -name '*.zpk' -printf '%s\n' | awk '{s += $1} END {print s}')
views=$(find "$I/pack/views" -type f | wc -l)
view_bytes=$(find "$I/pack/views" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
peak=$( { rm -rf "$I/pack"; /usr/bin/time -f '%M' "$IMGDEDUP" pack -q "$R"; } 2>&1 | tail -1)
echo "  build: ${t_build} s (peak RSS ${peak} KB); re-run over an unchanged index: ${t_rerun} s"
echo "  pack: ${blocks} distinct blocks, ${raw} bytes of blocks -> ${pbytes} bytes on disk ($(ratio "$pbytes" "$raw") of the blocks)"
echo "  the repository's images take ${ondisk} bytes on disk: the pack adds $(ratio "$pbytes" "$ondisk")x"
echo "  pack index (manifest, runs, frame tables) ${idx_bytes} bytes ($(ratio "$idx_bytes" "$blocks") B per block); ${views} views, ${view_bytes} bytes in all"

echo "== incremental: debian12-web.raw (and its compressed twin) removed, then web.raw added back"
mkdir -p "$D/held"; mv "$R/debian12-web.raw" "$R/debian12-web-compressed.qcow2" "$D/held/"
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
"$IMGDEDUP" pack --json "$R" > "$D/p_rm.json"
mv "$D/held/debian12-web.raw" "$R/"
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"
s=$(date +%s%N); "$IMGDEDUP" pack --json "$R" > "$D/p_add.json"; e=$(date +%s%N)
echo "  removed: $(j "$D/p_rm.json" removed) blocks dropped (compacted: $(j "$D/p_rm.json" compacted))"
echo "  added back: $(j "$D/p_add.json" added) blocks packed, $(j "$D/p_add.json" data_bytes_written) bytes written, $(j "$D/p_add.json" views_written) view(s), $(awk -v a="$s" -v b="$e" 'BEGIN {printf "%.3f", (b - a) / 1e9}') s"
mv "$D/held/debian12-web-compressed.qcow2" "$R/"
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"; pack_fresh

echo "== deploy transfers, node cache holding debian12-minbase.raw"
lib=$(dirname "$IMGDEDUP")/libimgdedup.a
cc -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" "$top/tests/e2e/pack_fetch.c" "$lib" \
  $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o "$D/pack_fetch"
has_casync=false
if command -v casync >/dev/null; then
  has_casync=true
  mkdir -p "$R/casync"
  for t in debian12-web.raw debian12-minbase-v2.raw; do
    casync make --store="$R/casync/store" "$R/casync/$t.caibx" "$R/$t" >/dev/null
  done
fi
# deploy takes the pack once it has --no-pack; until then it fetches raw ranges
deploy_has_pack=false
"$IMGDEDUP" deploy --help 2>&1 | grep -q -- --no-pack && deploy_has_pack=true
nginx_start "$R"; URL=$NGINX_URL
"$IMGDEDUP" deploy --from "$URL" --cache "$D/cache0" -q debian12-minbase.raw
SEED=$D/cache0/images/debian12-minbase.raw
now() { date +%s.%N; }
declare -A T BYTES REQS
run() { # NAME CMD... : one timed run, with nginx bytes/requests
  local name=$1; shift
  nginx_log_reset
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>"$D/err" || { cat "$D/err" >&2; exit 1; }
  t1=$(now)
  T[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}') "
  BYTES[$name]+="$(nginx_bytes) "
  REQS[$name]+="$(nginx_requests) "
}
med() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for t in debian12-web.raw debian12-minbase-v2.raw; do
  for i in $(seq "$RUNS"); do
    run "$t/pack_fetch" "$D/pack_fetch" "$URL" "$t" "$I" debian12-minbase.raw pack
    run "$t/raw_fetch" "$D/pack_fetch" "$URL" "$t" "$I" debian12-minbase.raw raw
    rm -rf "$D/c" "$D/out"; cp -a --sparse=always "$D/cache0" "$D/c"
    run "$t/deploy" "$IMGDEDUP" deploy --from "$URL" --cache "$D/c" -o "$D/out" -q "$t"
    cmp "$R/$t" "$D/out"
    if $deploy_has_pack; then
      rm -rf "$D/c" "$D/out"; cp -a --sparse=always "$D/cache0" "$D/c"
      run "$t/deploy_nopack" "$IMGDEDUP" deploy --no-pack --from "$URL" --cache "$D/c" -o "$D/out" -q "$t"
      cmp "$R/$t" "$D/out"
    fi
    if $has_casync; then
      rm -f "$D/out"
      run "$t/casync" casync extract --store="$URL/casync/store" --seed="$SEED" "$URL/casync/$t.caibx" "$D/out"
      cmp "$R/$t" "$D/out"
    fi
    rm -rf "$D/c" "$D/out"
  done
  printf '\n%s, debian12-minbase.raw cached, %s runs (medians)\n' "$t" "$RUNS"
  printf '%-44s %12s %9s %9s %14s\n' method "bytes sent" requests seconds "bytes/casync"
  cb=$(med "${BYTES[$t/casync]:-}"); [ -n "$cb" ] || cb=0
  for m in pack_fetch raw_fetch deploy deploy_nopack casync; do
    [ -n "${BYTES[$t/$m]:-}" ] || continue
    case $m in
      pack_fetch) label="missing blocks from the pack (pack_fetch)";;
      raw_fetch) label="missing blocks as raw ranges (pack_fetch)";;
      deploy) label=$($deploy_has_pack && echo "imgdedup deploy" || echo "imgdedup deploy (no pack support yet)");;
      deploy_nopack) label="imgdedup deploy --no-pack";;
      casync) label="casync extract --seed";;
    esac
    b=$(med "${BYTES[$t/$m]}")
    printf '%-44s %12s %9s %9.3f %14s\n' "$label" "$b" "$(med "${REQS[$t/$m]}")" "$(med "${T[$t/$m]}")" "$(ratio "$b" "$cb")"
  done
done
echo "(bytes include the catalog, the block map and, from the pack, the image's view;"
echo " pack_fetch times the fetch and verification of the missing blocks, not writing the image)"
