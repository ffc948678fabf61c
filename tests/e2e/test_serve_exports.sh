#!/usr/bin/env bash
# How imgdedup serve's exports are reached: several images in one server
# (listed, the first the default, an unknown name refused), TCP on
# 127.0.0.1 (--port), and the plugin run by nbdkit itself, as
# `nbdkit imgdedup ...` is once installed (stats=FILE, --dump-plugin).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
need_commands nbdkit nbdcopy nbdinfo
PLUGIN=$(dirname "$IMGDEDUP")/nbdkit-imgdedup-plugin.so
[ -f "$PLUGIN" ] || fail "no plugin next to $IMGDEDUP (make builds $PLUGIN)"
serve_corpus

# Several exports, the first the default; the listing.
serve_start multi --from "$REPO" --cache "$WORK/cache-multi" sib.raw base.raw
nbdinfo --list --json "nbd+unix:///?socket=$WORK/multi.sock" > "$WORK/list.json"
check "two exports listed" test "$(python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(open(sys.argv[1]))["exports"])))' "$WORK/list.json")" = "base.raw sib.raw"
nbdcopy "nbd+unix:///?socket=$WORK/multi.sock" "$WORK/default.raw"
check "the default export is the first image" cmp -s "$WORK/default.raw" "$REPO/sib.raw"
nbdcopy "$(serve_uri multi base.raw)" "$WORK/second.raw"
check "the second export reads its image" cmp -s "$WORK/second.raw" "$REF"
if nbdinfo --size "$(serve_uri multi nope.raw)" 2>/dev/null; then fail "an unknown export name was accepted"; fi
serve_stop multi
echo "ok: two exports in one server, the first is the default, unknown names refused"

# TCP on 127.0.0.1, from the cache the exports above filled.
PORT=$(nginx_free_port)
"$IMGDEDUP" serve --from "$REPO" --cache "$WORK/cache-multi" --port "$PORT" --json base.raw \
  > "$WORK/tcp.json" 2> "$WORK/tcp.err" &
TCP_PID=$!
SERVE_PIDS+=("$TCP_PID")
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/base.raw" >/dev/null 2>&1 && break; sleep 0.1; done
nbdcopy "nbd://127.0.0.1:$PORT/base.raw" "$WORK/tcp.raw"
kill -TERM "$TCP_PID"; wait "$TCP_PID" || fail "serve --port exited non-zero: $(cat "$WORK/tcp.err")"
check "TCP export: reads the image" cmp -s "$WORK/tcp.raw" "$REF"
check "TCP export: served from the cache" test "$(json_get "$WORK/tcp.json" bytes_fetched)" = 0

# The plugin run by nbdkit itself.
nbdkit -f --exit-with-parent -U "$WORK/direct.sock" -P "$WORK/direct.pid" "$PLUGIN" \
  from="$REPO" cache="$WORK/cache-direct" image=vm.ova/disk1.vmdk stats="$WORK/direct.json" \
  2> "$WORK/direct.err" &
DIRECT_PID=$!
for _ in $(seq 100); do [ -s "$WORK/direct.pid" ] && break; sleep 0.1; done
nbdcopy "nbd+unix:///vm.ova/disk1.vmdk?socket=$WORK/direct.sock" "$WORK/direct.raw"
kill -TERM "$DIRECT_PID"; wait "$DIRECT_PID" || fail "nbdkit with the plugin: $(cat "$WORK/direct.err")"
check "nbdkit + plugin: reads the image" cmp -s "$WORK/direct.raw" "$REF"
check "nbdkit + plugin: stats=FILE written" test "$(json_get "$WORK/direct.json" blocks_filled)" = "$NEW_COLD"
nbdkit "$PLUGIN" --dump-plugin > "$WORK/dump.txt" || fail "nbdkit --dump-plugin"
check "nbdkit --dump-plugin names the plugin" grep -q '^name=imgdedup$' "$WORK/dump.txt"
echo "PASS test_serve_exports"
