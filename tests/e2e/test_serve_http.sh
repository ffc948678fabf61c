#!/usr/bin/env bash
# imgdedup serve over HTTP (nginx): raw, compressed qcow2, a VMDK in an OVA
# and a tar member read byte for byte like the source, cold and fully
# cached; bytes_fetched and requests agree with nginx's access log (what it
# sent of the image, no byte twice); with a sibling image deployed into the
# cache first, only the blocks the sibling lacks are fetched and cached.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/nginx.sh"
source "$TESTS_DIR/serve.sh"
cleanup_fns+=(nginx_stop)
need_commands nbdkit nbdcopy nbdinfo qemu-img
serve_corpus
nginx_start "$REPO"

for id in base.raw comp.qcow2 vm.ova/disk1.vmdk plain.tar/disk.raw; do
  serve_cold_then_warm nginx "$id"
done

# A sibling cached: deploy sib.raw, then serve base.raw and comp.qcow2.
echo "with sib.raw cached: $NEW_SIB new blocks, $CACHED_SIB bytes in the cache"
[ "$NEW_SIB" -gt 0 ] && [ "$NEW_SIB" -lt 100 ] || fail "sibling shares too little: $NEW_SIB"
for id in base.raw comp.qcow2; do
  tag=sib-${id%%.*}
  "$IMGDEDUP" deploy -q --from "$NGINX_URL" --cache "$WORK/cache-$tag" sib.raw
  nginx_log_reset
  serve_start "$tag" --from "$NGINX_URL" --cache "$WORK/cache-$tag" "$id"
  nbdcopy --no-extents "$(serve_uri "$tag" "$id")" "$WORK/out.raw"
  serve_stop "$tag"
  check "sibling cached, $id: nbdcopy reads the source byte for byte" cmp -s "$WORK/out.raw" "$REF"
  check "sibling cached, $id: only the blocks the sibling lacks were cached" \
    test "$(serve_stat "$tag" blocks_filled)" = "$NEW_SIB"
  check "sibling cached, $id: at least the sibling's blocks read locally" \
    test "$(serve_stat "$tag" bytes_from_cache)" -ge "$CACHED_SIB"
  if [ "$id" = base.raw ]; then
    check "sibling cached, $id: bytes_fetched is what nginx sent" \
      test "$(nginx_file_bytes "$id")" = "$(serve_stat "$tag" bytes_fetched)"
    check "sibling cached, base.raw: fetched exactly the missing blocks" \
      test "$(serve_stat "$tag" bytes_fetched)" = $((NEW_SIB * BS))
  else
    check "sibling cached, comp.qcow2: fetched less than cold" \
      test "$(serve_stat "$tag" bytes_fetched)" -lt "$(serve_stat nginx-comp_qcow2 bytes_fetched)"
  fi
done
echo "PASS test_serve_http"
