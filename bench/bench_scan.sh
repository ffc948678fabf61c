#!/usr/bin/env bash
# scan throughput: a cached 1 GiB random raw image against `openssl dgst
# -sha256` of the same file (same run, medians); an 8 GiB sparse image
# holding 1 MiB of data; the corpus images (raw, qcow2, archives).
source "$(dirname "$0")/lib.sh"
D=$BENCH_DIR/scan; mkdir -p "$D/one" "$D/sparse"
[ -f "$D/one/random.raw" ] || head -c $((1 << 30)) /dev/urandom > "$D/one/random.raw"
cat "$D/one/random.raw" > /dev/null                     # cached: measure CPU, not the disk
scan_fresh() { rm -rf "$D/idx"; "$IMGDEDUP" scan -q --index "$D/idx" "$@"; }

t_ssl=$(median_time openssl dgst -sha256 "$D/one/random.raw")
t_scan=$(median_time scan_fresh "$D/one")
t_scan1=$(median_time scan_fresh --jobs 1 "$D/one")
echo "1 GiB random raw, cached (median of $RUNS):"
echo "  openssl dgst -sha256     ${t_ssl} s"
echo "  imgdedup scan --jobs 1   ${t_scan1} s   ($(ratio "$t_ssl" "$t_scan1")x openssl)"
echo "  imgdedup scan (2 jobs)   ${t_scan} s   ($(ratio "$t_ssl" "$t_scan")x openssl)"

rm -f "$D/sparse/sparse.raw"; truncate -s 8G "$D/sparse/sparse.raw"
head -c $((1 << 20)) /dev/urandom | dd of="$D/sparse/sparse.raw" bs=1M seek=4000 conv=notrunc 2>/dev/null
t_sparse=$(median_time scan_fresh "$D/sparse")
echo "8 GiB sparse raw, 1 MiB of data: imgdedup scan ${t_sparse} s"

rm -rf "$D/idx"
"$IMGDEDUP" scan -q --index "$D/idx" "$D/one"
t_rescan=$(median_time "$IMGDEDUP" scan -q --index "$D/idx" "$D/one")
echo "re-scan of an unchanged 1 GiB image: ${t_rescan} s"

if C=$(find_corpus); then
  for f in "$C"/*; do cat "$f" > /dev/null; done
  mkdir -p "$D/corpus"; rm -f "$D/corpus"/*
  for f in "$C"/*; do ln -sf "$f" "$D/corpus/" ; done
  # the scan does not follow symlinks: hard-link when possible, else copy
  rm -f "$D/corpus"/*; cp -l "$C"/* "$D/corpus/" 2>/dev/null || cp --sparse=always "$C"/* "$D/corpus/"
  t_corpus=$(median_time scan_fresh "$D/corpus")
  echo "corpus ($(ls "$D/corpus" | wc -l) files, $(du -sh --apparent-size "$D/corpus" | cut -f1) apparent): imgdedup scan ${t_corpus} s"
  for f in "$D/corpus"/*; do
    n=$(basename "$f"); mkdir -p "$D/single"; rm -f "$D/single"/*; cp -l "$f" "$D/single/" 2>/dev/null || cp "$f" "$D/single/"
    t=$(median_time scan_fresh "$D/single")
    printf '  %-34s %6s s\n' "$n" "$t"
  done
else
  echo "corpus: not found (set CORPUS=DIR/images; see ../shared/corpus)"
fi
