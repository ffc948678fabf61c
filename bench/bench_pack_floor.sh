#!/usr/bin/env bash
# bench_pack_floor.sh - the pack against the floor, over the ordered pairs
# of the four corpus raw images: X deployed from a private nginx on
# 127.0.0.1 into a node cache holding Y. For each pair: the bytes imgdedup
# deploy transfers (nginx's access log), split into index bytes (catalog,
# block map, entries, views) and data bytes (pack frames); casync extract
# --seed's bytes; the floor = X's distinct blocks neither zero nor in Y, in
# first-occurrence order, as one `zstd -19 --long=27` stream; sent/floor and
# the goal sent <= 1.2 floor + 0.2 map (map = X's full block map as sent).
# Floors are cached in $BENCH_DIR/pack_floor/floors (one zstd at a time).
#   IMGDEDUP=build/imgdedup PAIRS="web:minbase buildd:web" bench/bench_pack_floor.sh
source "$(dirname "$0")/lib.sh"
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/tests/e2e/nginx.sh"
C=$(find_corpus) || { echo "bench_pack_floor: no corpus (set CORPUS), skipped"; exit 0; }
names=(minbase minbase-v2 web buildd)
for n in "${names[@]}"; do
  [ -f "$C/debian12-$n.raw" ] || { echo "bench_pack_floor: $C/debian12-$n.raw missing, skipped"; exit 0; }
done
if [ -z "${PAIRS:-}" ]; then
  PAIRS=""
  for x in "${names[@]}"; do for y in "${names[@]}"; do
    [ "$x" = "$y" ] || PAIRS+="$x:$y "
  done; done
fi
has_casync=false; command -v casync >/dev/null && has_casync=true
$has_casync || echo "bench_pack_floor: casync not installed (scripts/install-deps --bench): no casync column"
D=$BENCH_DIR/pack_floor; FL=$D/floors
rm -rf "$D/repo" "$D/c" "$D/out" "$D"/seed-*; mkdir -p "$D/repo" "$FL"
trap 'nginx_stop; rm -rf "$D/repo" "$D/c" "$D/out" "$D"/seed-*' EXIT
R=$D/repo
for n in "${names[@]}"; do cp --reflink=auto --sparse=always "$C/debian12-$n.raw" "$R/"; done
"$IMGDEDUP" scan -q "$R"; "$IMGDEDUP" map -q "$R"; "$IMGDEDUP" pack -q "$R"
bs=$("$IMGDEDUP" info --json "$R" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("block_size", 4096))' 2>/dev/null || echo 4096)
nginx_start "$R"; URL=$NGINX_URL
# index vs data: the pack's frames are the data, every other request the index
split_log() { # -> "index data map"
  awk '$3 ~ /^2/ { if ($2 ~ /\.zpk$/) d += $4; else i += $4; if ($2 ~ /map/) m += $4 }
       END { printf "%d %d %d\n", i, d, m }' "$NGINX_LOG"
}
floor() { # X Y -> bytes of the floor, cached
  local f=$FL/$1_over_$2.bs$bs
  if [ ! -s "$f" ]; then
    python3 "$top/bench/floor_bytes.py" "$R/debian12-$1.raw" "$R/debian12-$2.raw" "$bs" |
      zstd -q -T1 -19 --long=27 -c | wc -c > "$f.tmp"
    mv "$f.tmp" "$f"
  fi
  cat "$f"
}
printf '%-22s %11s %10s %11s %11s %11s %11s %7s %7s %5s\n' "X over Y" sent index data floor casync map \
  sent/fl sent/ca goal
for p in $PAIRS; do
  x=${p%%:*}; y=${p##*:}; X=debian12-$x.raw; Y=debian12-$y.raw
  if [ ! -d "$D/seed-$y" ]; then
    "$IMGDEDUP" deploy --from "$URL" --cache "$D/seed-$y" -q "$Y"
  fi
  rm -rf "$D/c" "$D/out"; cp -a --sparse=always "$D/seed-$y" "$D/c"
  nginx_log_reset
  "$IMGDEDUP" deploy --from "$URL" --cache "$D/c" -o "$D/out" -q "$X"
  cmp "$R/$X" "$D/out"
  [ -n "${SHOW_URIS:-}" ] && awk '{print $2, $4}' "$NGINX_LOG" | sort | uniq -c | sort -k3 -n | tail -20 >&2
  read -r ib db mb < <(split_log)
  sent=$((ib + db))
  cb=-
  if $has_casync; then
    [ -f "$R/casync/$X.caibx" ] || { mkdir -p "$R/casync"; casync make --store="$R/casync/store" "$R/casync/$X.caibx" "$R/$X" >/dev/null; }
    rm -f "$D/out"; nginx_log_reset
    casync extract --store="$URL/casync/store" --seed="$D/seed-$y/images/$Y" "$URL/casync/$X.caibx" "$D/out" >/dev/null 2>&1
    cmp "$R/$X" "$D/out"; cb=$(nginx_bytes)
  fi
  fl=$(floor "$x" "$y")
  goal=$(awk -v s="$sent" -v f="$fl" -v m="$mb" 'BEGIN { print (s <= 1.2 * f + 0.2 * m) ? "yes" : "no" }')
  printf '%-22s %11d %10d %11d %11d %11s %11d %7s %7s %5s\n' "$x over $y" "$sent" "$ib" "$db" "$fl" "$cb" "$mb" \
    "$(ratio "$sent" "$fl")" "$( [ "$cb" = - ] && echo - || ratio "$sent" "$cb")" "$goal"
  rm -rf "$D/c" "$D/out"
done
echo "(bytes as nginx sent them; index = every request but the pack's frames (.zpk); map = requests naming a map)"
