#!/usr/bin/env bash
# check-layers.sh - lib/'s include graph is layered and acyclic:
#   base/ includes only base/ (and the public imgdedup.h)
#   formats/ includes base/ and formats/
#   index/ includes base/, formats/ and index/
#   node/ includes any of them
#   cmd/ includes only the public imgdedup.h (and its own cli.h)
# and no header includes itself through a cycle.
# Prints the folder-level graph; exits 1 naming each include that breaks it.
# docs/architecture.md describes the layers.
set -euo pipefail
cd "$(dirname "$0")/.."
rank() { case $1 in base) echo 0 ;; formats) echo 1 ;; index) echo 2 ;; node) echo 3 ;; *) echo 9 ;; esac; }
bad=0
declare -A edges=()
for f in lib/*/*.c lib/*/*.h; do
  from=$(basename "$(dirname "$f")")
  while read -r inc; do
    to=${inc%%/*}
    [ "$to" = "$inc" ] && continue # imgdedup.h, system headers
    if [ "$(rank "$to")" -gt "$(rank "$from")" ]; then
      echo "check-layers: $f includes $inc ($from/ may not include $to/)" >&2
      bad=1
    fi
    [ "$from" != "$to" ] && edges["$from -> $to"]=1
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done
for f in cmd/*.c cmd/*.h; do
  while read -r inc; do
    case $inc in imgdedup.h|cli.h) ;; *)
      echo "check-layers: $f includes $inc (front ends use the public imgdedup.h only)" >&2
      bad=1 ;;
    esac
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done
# Header cycles (within a folder a header may include its neighbours).
declare -A deps=()
for h in lib/*/*.h; do
  deps[${h#lib/}]=$(sed -n 's/^#include "\([a-z]*\/[^"]*\)".*/\1/p' "$h" | tr '\n' ' ')
done
visit() { # path-so-far header
  local h=$2 d
  for d in ${deps[$h]:-}; do
    case " $1 " in *" $d "*) echo "check-layers: header cycle: $1 $d" >&2; bad=1; continue ;; esac
    visit "$1 $d" "$d"
  done
}
for h in "${!deps[@]}"; do visit "$h" "$h"; done
printf '%s\n' "${!edges[@]}" | sort
exit $bad
