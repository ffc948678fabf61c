#!/usr/bin/env bash
# svg2png.sh IN.svg OUT.png - render an SVG with Debian's headless chromium
# (scripts/install-deps --bench installs it), at the SVG's own size.
set -euo pipefail
in=$(realpath "$1"); out=$(realpath -m "$2")
command -v chromium >/dev/null || { echo "svg2png: chromium not installed (scripts/install-deps --bench)" >&2; exit 1; }
read -r w h < <(python3 - "$in" <<'PY'
import re, sys
head = open(sys.argv[1]).read(4096)
w = re.search(r'<svg[^>]*\swidth="(\d+)', head); h = re.search(r'<svg[^>]*\sheight="(\d+)', head)
print(w.group(1) if w else 800, h.group(1) if h else 800)
PY
)
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size="$w,$h" \
  --screenshot="$out" "file://$in" >/dev/null 2>&1
[ -s "$out" ] || { echo "svg2png: chromium wrote nothing" >&2; exit 1; }
echo "$out (${w}x${h})"
