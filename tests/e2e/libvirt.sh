# libvirt.sh - a private libvirtd for a test (sourced after lib.sh).
#
# Debian 12 packages the monolithic libvirtd (no virtqemud).  Run as root it
# is the privileged daemon with fixed paths (/etc/libvirt, /run/libvirt,
# /var/lib/libvirt, ...), and as root qemu:///session is no way out: the
# client maps it to the system socket.  So the daemon runs in a mount
# namespace of its own (unshare -m) in which those paths are bind mounts of
# directories under $WORK/libvirt: the machine's libvirt configuration and
# state are never touched, its socket is $WORK/libvirt/run/libvirt-sock
# (visible outside the namespace), and nothing outlives the test.  It needs
# no systemd, D-Bus, polkit, virtlogd or cgroup setup (qemu.conf below).
#
#   libvirt_start     starts libvirtd; returns once `virsh version` answers.
#                     Sets LIBVIRT_URI; virsh_ runs virsh against it.
#   libvirt_stop      destroys every domain still running, stops libvirtd
#                     (registered as a cleanup function)
#   libvirt_skip_reason  why this machine cannot run it (empty if it can)

LIBVIRT_DIR= LIBVIRT_PID= LIBVIRT_URI=

libvirt_skip_reason() {
  command -v libvirtd >/dev/null || { echo "libvirtd missing (scripts/install-deps: libvirt-daemon-system)"; return; }
  command -v virsh >/dev/null || { echo "virsh missing (scripts/install-deps: libvirt-clients)"; return; }
  [ "$(id -u)" = 0 ] || { echo "needs root: the privileged libvirtd in a private mount namespace"; return; }
  unshare -m true 2>/dev/null || echo "unshare -m fails here: no private mount namespace for libvirtd"
}

virsh_() { virsh -q -c "$LIBVIRT_URI" "$@"; }

libvirt_start() {
  local d=$WORK/libvirt i
  LIBVIRT_DIR=$d
  mkdir -p "$d"/{etc/qemu,run,lib,cache,log}
  # unix sockets without authentication (no polkit here); the daemon's log
  # on stderr, errors and warnings only
  cat > "$d/etc/libvirtd.conf" <<'EOF'
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
EOF
  # qemu runs as root with no security driver (the test's files stay
  # readable as they are), no cgroups, no private /dev, its stdio into a
  # file (no virtlogd)
  cat > "$d/etc/qemu.conf" <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
  cat > "$d/start.sh" <<'EOF'
set -e
mount --make-rprivate /
for m in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt; do
  mkdir -p "${m#*:}"
  mount --bind "$1/${m%%:*}" "${m#*:}"
done
# the pid file too (by default /run/libvirtd.pid, outside /run/libvirt)
exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
EOF
  unshare -m bash "$d/start.sh" "$d" 2> "$d/libvirtd.log" &
  LIBVIRT_PID=$!
  LIBVIRT_URI="qemu:///system?socket=$d/run/libvirt-sock"
  for i in $(seq 600); do
    kill -0 "$LIBVIRT_PID" 2>/dev/null || fail "libvirtd exited at start: $(tail -n 20 "$d/libvirtd.log")"
    [ -S "$d/run/libvirt-sock" ] && virsh_ version >/dev/null 2>&1 && break
    sleep 0.1
  done
  virsh_ version > "$d/version" 2>&1 || fail "libvirtd not answering after 60 s: $(tail -n 20 "$d/libvirtd.log")"
  echo "libvirtd (pid $LIBVIRT_PID): $(tr '\n' ' ' < "$d/version")"
}

libvirt_stop() {
  [ -n "$LIBVIRT_PID" ] || return 0
  local dom pidf
  for dom in $(virsh_ list --name 2>/dev/null); do virsh_ destroy "$dom" >/dev/null 2>&1 || true; done
  # a qemu that libvirtd could not stop (the daemon is gone): by its pid file
  for pidf in "$LIBVIRT_DIR"/run/qemu/*.pid; do
    [ -s "$pidf" ] && kill -KILL "$(cat "$pidf")" 2>/dev/null || true
  done
  kill -TERM "$LIBVIRT_PID" 2>/dev/null || true
  wait "$LIBVIRT_PID" 2>/dev/null || true
  LIBVIRT_PID=
}
cleanup_fns+=(libvirt_stop)
