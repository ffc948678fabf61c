# cachebudget.sh - the repository the cache-budget tests rank (cache gc and
# serve --cache-max), served by nginx; sourced after lib.sh and nginx.sh.
#   budget_corpus OWN_BYTES [OWN_TREE]
#       $R (indexed), served at $URL: old.raw, content of its own (OWN_BYTES
#       random bytes and a copy of OWN_TREE); sib1.raw and sib2.raw, two
#       siblings (sib2 is sib1's files plus one); slow.raw, sib1 and 1.5 MB
#       more (what a deploy of it copies comes from sib1 alone).  8 MiB ext4s.
#   deploy CACHE IMAGE   deploy IMAGE from $URL into CACHE (--json: $WORK/d.json)
#   disk CACHE           the cache's disk_bytes, as cache ls reports them
budget_corpus() {
  local t=$WORK/t
  R=$WORK/repo
  mkdir -p "$R" "$t/base" "$t/own"
  cp -r /usr/share/common-licenses "$t/base/lic"
  python3 -c 'import random,sys; r=random.Random(3); open(sys.argv[1],"wb").write(r.randbytes(600000))' "$t/base/r.bin"
  [ -z "${2:-}" ] || cp -r "$2" "$t/own/eu"
  python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[2],"wb").write(r.randbytes(int(sys.argv[1])))' \
    "$1" "$t/own/r.bin"
  mkext4 "$R/old.raw" 8 "$t/own"
  mkext4 "$R/sib1.raw" 8 "$t/base"
  cp -r "$t/base" "$t/base2"
  echo "sib2 only" > "$t/base2/extra.txt"
  mkext4 "$R/sib2.raw" 8 "$t/base2"
  python3 - "$R/sib1.raw" "$R/slow.raw" <<'PY'
import random, sys
open(sys.argv[2], "wb").write(open(sys.argv[1], "rb").read() + random.Random(4).randbytes(1536000))
PY
  age_files "$R"
  "$IMGDEDUP" scan -q "$R"
  "$IMGDEDUP" map -q "$R"
  nginx_start "$R"
  URL=$NGINX_URL
}
deploy() { "$IMGDEDUP" deploy --from "$URL" --cache "$1" --json "$2" > "$WORK/d.json"; }
disk() { "$IMGDEDUP" cache ls --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["disk_bytes"])'; }
