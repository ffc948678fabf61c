#!/usr/bin/env bash
# Runs every tests/e2e/test_*.sh with $IMGDEDUP set; prints "N passed, N failed"
# (scripts) and the checks they reported by name ("ok: WHAT" lines).  A script
# passes when it exits 0 having reported at least one named check: one that
# exits 0 without any did not test anything and counts as failed, unless it
# said why it could not run (skip_script in lib.sh: a "SKIP: " line), which
# counts as skipped.  E2E_TESTS="test_a test_b" runs only those.  With
# RESULTS set, appends "e2e PASSED FAILED" (scripts) to that file.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${IMGDEDUP:?set IMGDEDUP to the binary under test}"
export IMGDEDUP
# each test's output, kept beside the binary under test (not a fixed /tmp
# path: several checkouts may run their suites at once)
logs=${E2E_LOG_DIR:-$(dirname "$IMGDEDUP")/e2e-logs}
mkdir -p "$logs" && rm -f "$logs"/test_*.log
# Under the sanitizers (E2E_SANITIZED=1: the ASan build) the scripts whose
# work is all in the nbdkit plugin, which nbdkit loads unsanitized, or in
# qemu booting a guest, are run by the normal pass only: the sanitized
# binary would only start them.
SAN_SKIP=" test_guest_boot test_libvirt test_serve_restart_guest test_serve_vm test_serve_all
 test_serve_cache_unwritable test_serve_concurrent_first test_serve_failed_blocks test_serve_faults
 test_serve_limits test_serve_metrics test_serve_profile test_serve_slow test_systemd "
# the fixtures (corpora built and indexed once: fixture in lib.sh) the
# scripts of this run share
E2E_FIXTURES=$(mktemp -d "${TMPDIR:-/tmp}/idd-fixtures.XXXXXX") || exit 1
export E2E_FIXTURES
trap 'rm -rf "$E2E_FIXTURES"' EXIT
pass=0 fail=0 skipped=0 failed=()
all_start=$(date +%s)
for t in "$here"/test_*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  [ -z "${E2E_TESTS:-}" ] || [[ " $E2E_TESTS " == *" $name "* ]] || continue
  if [ "${E2E_SANITIZED:-0}" = 1 ] && [[ "$SAN_SKIP" == *" $name "* ]]; then
    skipped=$((skipped + 1)); echo "skip $name (plugin or guest only: run by the normal pass)"
    continue
  fi
  start=$(date +%s)
  rc=0
  bash "$t" > "$logs/$name.log" 2>&1 || rc=$?
  n=$(grep -c '^ok: ' "$logs/$name.log" || true)
  if [ "$rc" -eq 0 ] && [ "$n" -eq 0 ] && grep -q '^SKIP: ' "$logs/$name.log"; then
    skipped=$((skipped + 1)); echo "skip $name: $(grep -m1 '^SKIP: ' "$logs/$name.log" | cut -c7-)"
    continue
  fi
  if [ "$rc" -eq 0 ] && [ "$n" -eq 0 ]; then
    echo "run-all.sh: $name exited 0 without reporting a named check" >> "$logs/$name.log"; rc=1
  fi
  if [ "$rc" -eq 0 ]; then
    pass=$((pass + 1)); echo "ok   $name ($(( $(date +%s) - start )) s, $n checks)"
  else
    fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name ($(( $(date +%s) - start )) s)"
    tail -n 40 "$logs/$name.log" | sed 's/^/    /'
  fi
done
steps=$(cat "$logs"/test_*.log 2>/dev/null | grep -c '^ok: ' || true)
echo "e2e: $pass passed, $fail failed, $skipped skipped ($steps named checks passed, $(( $(date +%s) - all_start )) s)"
[ -z "${RESULTS:-}" ] || echo "e2e $pass $fail" >> "$RESULTS"
[ "$fail" -eq 0 ]
