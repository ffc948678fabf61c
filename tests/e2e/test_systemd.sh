#!/usr/bin/env bash
# contrib/systemd: the node's service units.
#  - systemd-analyze verify accepts imgdedup-serve.socket and .service, and
#    docs/serve.md shows the service unit as it is;
#  - systemd-analyze security (offline) rates the service's exposure at most
#    1.5 (of 10: the hardening a network daemon should have);
#  - the service's own ExecStart line (its variables set as serve.env and
#    CacheDirectory= would), run under socket activation by
#    systemd-socket-activate on the socket unit's kind of socket: the first
#    client starts it, nbdinfo --list lists the catalog, an image reads
#    exact through nbdcopy, an image published while it runs reads exact,
#    and SIGTERM stops it cleanly with its counters;
#  - every system call the service made then (strace) is one its
#    SystemCallFilter= allows;
#  - serve given sockets by systemd and --socket too is a usage error.
source "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
for c in systemd-analyze systemd-socket-activate strace nbdkit nbdinfo nbdcopy; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
UNITS=$TESTS_DIR/../../contrib/systemd
[ -f "$UNITS/imgdedup-serve.service" ] && [ -f "$UNITS/imgdedup-serve.socket" ] || fail "no units in $UNITS"
# the units as installed, with this build's binary in ExecStart (verify
# checks that it is an executable)
mkdir -p "$WORK/units"
sed "s|/usr/local/bin/imgdedup|$IMGDEDUP|" "$UNITS/imgdedup-serve.service" > "$WORK/units/imgdedup-serve.service"
cp "$UNITS/imgdedup-serve.socket" "$WORK/units/"
check "systemd-analyze verify accepts the units" \
  systemd-analyze verify --man=no "$WORK/units/imgdedup-serve.socket" "$WORK/units/imgdedup-serve.service"
systemd-analyze security --offline=yes "$WORK/units/imgdedup-serve.service" > "$WORK/security.txt" 2>&1 || true
tail -n 1 "$WORK/security.txt"
exposure_ok() { systemd-analyze security --offline=yes --threshold=15 "$1" > /dev/null 2>&1; }
check "the service's exposure is at most 1.5" exposure_ok "$WORK/units/imgdedup-serve.service"
# docs/serve.md shows the service unit as it is
$PY - "$UNITS/imgdedup-serve.service" "$TESTS_DIR/../../docs/serve.md" <<'EOF' || fail "docs/serve.md shows another unit"
import sys
unit = open(sys.argv[1]).read()
unit = unit[unit.index("[Unit]"):]
doc = open(sys.argv[2]).read()
shown = doc[doc.index("```ini\n", doc.index("The service unit:")) + 7:]
shown = shown[:shown.index("```")]
sys.exit(0 if shown == unit else 1)
EOF
echo "ok: docs/serve.md shows the service unit as it is"
grep -q '^ListenStream=/run/imgdedup/imgdedup.sock$' "$WORK/units/imgdedup-serve.socket" || fail "socket unit: ListenStream"

REPO=$WORK/repo
mkdir -p "$REPO/os"
mkimg() { $PY -c 'import random,sys; open(sys.argv[1],"wb").write(random.Random(int(sys.argv[2])).randbytes(300000 + 4096 * int(sys.argv[2])))' "$1" "$2"; }
mkimg "$REPO/os/a.raw" 1
mkimg "$REPO/os/b.raw" 2
publish() { age_files "$REPO"; "$IMGDEDUP" scan -q "$REPO"; "$IMGDEDUP" map -q "$REPO"; }
publish
mkdir -p "$WORK/cache"
# ExecStart as systemd runs it: ${SOURCE} and $SERVE_OPTS from serve.env,
# ${CACHE_DIRECTORY} from CacheDirectory= ($SERVE_OPTS split into words)
mapfile -t CMD < <($PY - "$WORK/units/imgdedup-serve.service" "$REPO" "$WORK/cache" <<'EOF'
import re, sys
unit, source, cache = sys.argv[1:]
line = next(l for l in open(unit) if l.startswith("ExecStart="))[len("ExecStart="):].strip()
env = {"SOURCE": source, "CACHE_DIRECTORY": cache, "SERVE_OPTS": "--refresh 0"}
out = []
for w in line.split():
    m = re.fullmatch(r"\$\{(\w+)\}", w) or re.fullmatch(r"\$(\w+)", w)
    if m and w.startswith("${"):
        out.append(env[m.group(1)])
    elif m:
        out.extend(env[m.group(1)].split())
    else:
        assert "$" not in w, w
        out.append(w)
print("\n".join(out))
EOF
)
[ "${CMD[0]}" = "$IMGDEDUP" ] || fail "ExecStart: ${CMD[*]}"
echo "ExecStart: ${CMD[*]}"
SOCK=$WORK/imgdedup.sock
# under strace, for the system calls the service makes (SystemCallFilter=);
# systemd-socket-activate passes on only the variables named with -E, and
# LeakSanitizer (a sanitizer build) cannot run under ptrace
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
strace -f -qq -c -o "$WORK/strace.txt" systemd-socket-activate -E PATH -E ASAN_OPTIONS -E UBSAN_OPTIONS \
  -l "$SOCK" "${CMD[@]}" \
  > "$WORK/svc.out" 2> "$WORK/svc.err" &
SVC=$!
stop_svc() { kill -TERM "$SVC" 2>/dev/null; wait "$SVC" 2>/dev/null || true; }
cleanup_fns+=(stop_svc)
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || fail "systemd-socket-activate did not listen: $(cat "$WORK/svc.err")"
listed() {
  nbdinfo --list --json "nbd+unix:///?socket=$SOCK" |
    $PY -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(sys.stdin)["exports"])))'
}
check "socket activated: the first client lists the catalog" test "$(listed)" = "os/a.raw os/b.raw"
check "socket activated: serve runs under the activator's pid" grep -q "Execing $IMGDEDUP" "$WORK/svc.err"
nbdcopy "nbd+unix:///os/b.raw?socket=$SOCK" "$WORK/b.out"
check "socket activated: an image reads exact" cmp "$WORK/b.out" "$REPO/os/b.raw"
mkimg "$REPO/os/c.raw" 3
publish
nbdcopy "nbd+unix:///os/c.raw?socket=$SOCK" "$WORK/c.out"
check "socket activated: an image published while running reads exact" cmp "$WORK/c.out" "$REPO/os/c.raw"
SERVE_PID=$(pgrep -P "$SVC" -x imgdedup) || fail "no service process under strace"
kill -TERM "$SERVE_PID"
rc=0
wait "$SVC" || rc=$?
check "SIGTERM stops the service with status 0" test "$rc" = 0
# every system call serve and nbdkit made is one the unit's filter allows
$PY - "$WORK/units/imgdedup-serve.service" "$WORK/strace.txt" <<'EOF' || fail "SystemCallFilter"
import re, subprocess, sys
out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                     check=True).stdout
groups, cur = {}, None
for line in out.splitlines():
    if line.startswith("@"):
        cur = line.split()[0]
        groups[cur] = []
    elif cur and line.strip() and not line.strip().startswith("#"):
        groups[cur].append(line.split()[0])
def names(items):
    res = set()
    for it in items:
        res |= names(groups[it]) if it.startswith("@") else {it}
    return res
allow, deny = None, set()
for line in open(sys.argv[1]):
    if line.startswith("SystemCallFilter="):
        v = line.split("=", 1)[1].strip()
        if v.startswith("~"):
            deny |= names(v[1:].split())
        else:
            allow = (allow or set()) | names(v.split())
used = set()
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and re.fullmatch(r"[a-z_0-9]+", f[-1]) and f[-1] != "total":
        used.add(f[-1])
bad = sorted(s for s in used if s not in allow or s in deny)
print(f"{len(used)} system calls made; outside SystemCallFilter: {bad}")
sys.exit(1 if bad or len(used) < 20 else 0)
EOF
echo "ok: every system call the service made is allowed by SystemCallFilter="
check "-q: nothing on stdout" test ! -s "$WORK/svc.out"
grep -v -e '^Listening on' -e '^Communication attempt' -e '^Execing' "$WORK/svc.err" > "$WORK/svc.other" || true
check "the service wrote no message" test ! -s "$WORK/svc.other"

# sockets from systemd and --socket: which one is meant is not clear
rc=0
bash -c 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@"' _ "$IMGDEDUP" serve --all --from "$REPO" \
  --cache "$WORK/cache" --socket "$WORK/x.sock" 2> "$WORK/both.err" || rc=$?
check "sockets from systemd and --socket: a usage error" test "$rc" = 2
check "  saying so" grep -q "LISTEN_FDS" "$WORK/both.err"
echo "all systemd checks passed"
