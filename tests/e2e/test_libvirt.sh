#!/usr/bin/env bash
# A real libvirt guest boots from `imgdedup serve` (docs/libvirt.md): a
# private libvirtd (libvirt.sh) runs a domain of type qemu (TCG) whose disk
# is a local qcow2 overlay with, in the domain XML, a <backingStore> of type
# network, protocol nbd, over serve's unix socket.  The guest (guest.sh's
# kernel and initramfs) reads every file right and writes one; the console,
# a file, shows its marker; virsh destroy and undefine remove the domain.
# The write is in the overlay, the export is unchanged, serve answered the
# guest's reads.  Also checked: what libvirt 9.0 makes of <reconnect> in an
# nbd source (dropped), and the way around it (docs/libvirt.md): a second
# domain whose disk, with reconnect-delay, is on qemu's command line
# (<qemu:commandline>) reads its whole disk three times over while serve is
# stopped with SIGTERM and killed with SIGKILL, and started again, each time
# on the same socket: no I/O error, everything read right.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/guest.sh"
source "$TESTS_DIR/serve.sh"
source "$TESTS_DIR/libvirt.sh"
why=$(libvirt_skip_reason)
[ -z "$why" ] || skip_script "$why"
for c in qemu-system-x86_64 qemu-img nbdkit nbdinfo nbdcopy debugfs; do
  command -v $c >/dev/null || fail "$c missing (scripts/install-deps)"
done
guest_prepare
REPO=$WORK/repo
mkdir -p "$REPO"
guest_make_disk "$REPO/disk.raw" 64
SHA=$(sha256sum < "$REPO/disk.raw")
"$IMGDEDUP" scan -q "$REPO"
"$IMGDEDUP" map -q "$REPO"
serve_start vm --from "$REPO" --cache "$WORK/cache" disk.raw
SOCK=$WORK/vm.sock
libvirt_start

DOM=idd-guest CONSOLE=$WORK/console.log OVL=$WORK/vm1.qcow2
# the overlay: libvirt's storage driver (vol-create) refuses a backing
# store that is not a local file, so qemu-img makes it
qemu-img create -q -f qcow2 -b "nbd+unix:///disk.raw?socket=$SOCK" -F raw "$OVL"
# domain_xml [EXTRA_IN_SOURCE]: the domain, EXTRA inside the nbd <source>
domain_xml() {
  cat <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_KERNEL</kernel>
    <initrd>$GUEST_INITRD</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$OVL'/>
      <backingStore type='network'>
        <format type='raw'/>
        <source protocol='nbd' name='disk.raw'>
          <host transport='unix' socket='$SOCK'/>${1:-}
        </source>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$CONSOLE'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$CONSOLE'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
EOF
}

# wait_console REGEX: until the console shows it, or the domain is off
wait_console() {
  local t0 st; t0=$(_guest_us)
  while [ $(( ($(_guest_us) - t0) / 1000000 )) -lt "${GUEST_TIMEOUT:-180}" ]; do
    grep -a -q -E "$1" "$CONSOLE" 2>/dev/null && return 0
    st=$(virsh_ domstate --reason "$DOM" 2>&1) || true
    case $st in "shut off"*|crashed*) break ;; esac
    sleep 0.5
  done
  grep -a -q -E "$1" "$CONSOLE" 2>/dev/null && return 0
  echo "wait_console: no '$1'; the domain: $st; its qemu log ends:" >&2
  tail -n 5 "$LIBVIRT_DIR/log/qemu/$DOM.log" | sed 's/^/    /' >&2
  return 1
}

# libvirt 9.0 (Debian 12) has no <reconnect> for nbd disks (9.2 added it):
# without --validate it is dropped, with it the XML is refused
domain_xml "<reconnect delay='30'/>" > "$WORK/reconnect.xml"
if virsh_ define --validate "$WORK/reconnect.xml" >/dev/null 2>&1; then
  reconnect=kept
else
  virsh_ define "$WORK/reconnect.xml" >/dev/null || fail "define (with <reconnect>)"
  reconnect=dropped
  virsh_ dumpxml --inactive "$DOM" | grep -q '<reconnect' && reconnect=kept
  virsh_ undefine "$DOM" >/dev/null
fi
echo "libvirt $(virsh_ version | awk '/library: libvirt/ {print $NF; exit}'): <reconnect> in an nbd source is $reconnect"

domain_xml > "$WORK/domain.xml"
virsh_ define "$WORK/domain.xml" || fail "virsh define"
check "the domain is defined" test "$(virsh_ domstate "$DOM")" = "shut off"
virsh_ start "$DOM" || fail "virsh start: $(tail -n 5 "$LIBVIRT_DIR/log/qemu/$DOM.log")"
check "the domain runs" test "$(virsh_ domstate "$DOM")" = running
# what libvirt made of the disk: its qemu command line
qlog=$LIBVIRT_DIR/log/qemu/$DOM.log
check "libvirt runs qemu with TCG" grep -q -- '-accel tcg' "$qlog"
check "libvirt opens the export with qemu's nbd driver over the socket" \
  grep -q "\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$SOCK\"},\"export\":\"disk.raw\"" "$qlog"
check "the overlay's backing is that node" grep -q '"driver":"qcow2".*"backing":"libvirt-2-format"' "$qlog"
# the guest powers off after its marker; without ACPI (none in the XML)
# that halts it and the domain stays up until destroyed
t0=$(_guest_us) line=
while [ $(( ($(_guest_us) - t0) / 1000000 )) -lt "${GUEST_TIMEOUT:-180}" ]; do
  line=$(grep -a -o 'IMGDEDUP-GUEST-\(OK\|FAIL\) .*' "$CONSOLE" 2>/dev/null | head -n 1 | tr -d '\r') || true
  [ -n "$line" ] && break
  [ "$(virsh_ domstate "$DOM")" = running ] || break
  sleep 0.5
done
[ -n "$line" ] || { tail -n 25 "$CONSOLE" | sed 's/^/    /' >&2; fail "no marker on the console"; }
echo "console after $(_guest_secs "$t0") s: $line"
case $line in IMGDEDUP-GUEST-OK*) ;; *) tail -n 25 "$CONSOLE" | sed 's/^/    /' >&2; fail "the guest failed: $line" ;; esac
GUEST_RESULT=${line#IMGDEDUP-GUEST-OK }
check "guest mounted rw" test "$(guest_field mode)" = rw
check "guest saw $GUEST_DISK_FILES files" test "$(guest_field files)" = "$GUEST_DISK_FILES"
check "guest's file digest is the tree's" test "$(guest_field digest)" = "$GUEST_DISK_DIGEST"
wrote=$(guest_field wrote)
check "the guest wrote a file" test -n "$wrote"
check "no I/O error on the console" bash -c "! grep -a -q -i 'I/O error' '$CONSOLE'"
virsh_ destroy "$DOM" || fail "virsh destroy"
check "destroyed: shut off" test "$(virsh_ domstate "$DOM")" = "shut off"
virsh_ undefine "$DOM" || fail "virsh undefine"
check "undefined: libvirt knows no such domain" bash -c "! virsh -q -c '$LIBVIRT_URI' dominfo $DOM >/dev/null 2>&1"
qemu-img convert -O raw "$OVL" "$WORK/after.raw"
got=$(debugfs -R 'cat /imgdedup-guest-write' "$WORK/after.raw?offset=1048576" 2>/dev/null | md5sum | cut -d' ' -f1)
check "the guest's file is in the overlay" test "$got" = "$wrote"
nbdcopy "$(serve_uri vm disk.raw)" "$WORK/export-after.raw"
check "the export still reads as the original image" test "$(sha256sum < "$WORK/export-after.raw")" = "$SHA"
serve_stop vm
check "serve answered the guest's reads" test "$(serve_stat vm bytes_read)" -gt "$GUEST_DISK_BYTES"
check "serve had no read errors" test "$(serve_stat vm read_errors)" = 0
check "the source image is unchanged" test "$(sha256sum < "$REPO/disk.raw")" = "$SHA"

# The same export as a disk that outlives a restart of serve: with libvirt
# 9.0 only qemu's command line can give it reconnect-delay (docs/libvirt.md)
SERVE_SOCKET=$SOCK serve_start vm2 --from "$REPO" --cache "$WORK/cache" disk.raw
DOM=idd-reconnect CONSOLE=$WORK/console2.log
domain_xml | python3 -c '
import re, sys
x = sys.stdin.read()
x = x.replace("<domain type=\x27qemu\x27>",
              "<domain type=\x27qemu\x27 xmlns:qemu=\x27http://libvirt.org/schemas/domain/qemu/1.0\x27>")
x = re.sub(r"<cmdline>console=ttyS0 panic=-1", "<cmdline>console=ttyS0 panic=-1 imgdedup.passes=3", x)
x = re.sub(r"\s*<disk .*?</disk>", "", x, flags=re.S)
x = x.replace("</domain>", """  <qemu:commandline>
    <qemu:arg value=\x27-blockdev\x27/>
    <qemu:arg value=\x27driver=nbd,node-name=idd-disk,server.type=unix,server.path=%s,export=disk.raw,read-only=on,reconnect-delay=120,open-timeout=120\x27/>
    <qemu:arg value=\x27-device\x27/>
    <qemu:arg value=\x27virtio-blk-pci,drive=idd-disk,bus=pci.0,addr=0x9\x27/>
  </qemu:commandline>
</domain>""" % sys.argv[1])
print(x, end="")' "$SOCK" > "$WORK/reconnect-domain.xml"
virsh_ define "$WORK/reconnect-domain.xml" || fail "virsh define (qemu:commandline disk)"
virsh_ start "$DOM" || fail "virsh start: $(tail -n 5 "$LIBVIRT_DIR/log/qemu/$DOM.log")"
wait_console 'imgdedup-guest: pass 1 start' || fail "the guest never began its passes: $(tail -n 5 "$CONSOLE")"
serve_stop vm2
SERVE_SOCKET=$SOCK serve_start vm3 --from "$REPO" --cache "$WORK/cache" disk.raw
wait_console 'imgdedup-guest: pass 2 start' || fail "the guest never began pass 2: $(tail -n 5 "$CONSOLE")"
serve_kill9 vm3
SERVE_SOCKET=$SOCK serve_start vm4 --from "$REPO" --cache "$WORK/cache" disk.raw
wait_console 'IMGDEDUP-GUEST-(OK|FAIL)' || fail "no marker on the console: $(tail -n 5 "$CONSOLE")"
line=$(grep -a -o 'IMGDEDUP-GUEST-\(OK\|FAIL\) .*' "$CONSOLE" | head -n 1 | tr -d '\r')
echo "console: $line"
case $line in IMGDEDUP-GUEST-OK*) ;; *) tail -n 25 "$CONSOLE" | sed 's/^/    /' >&2; fail "the guest failed: $line" ;; esac
GUEST_RESULT=${line#IMGDEDUP-GUEST-OK }
check "restarts under libvirt: the guest did its passes" test "$(guest_field passes)" = 3
check "restarts under libvirt: the guest's file digest is the tree's" test "$(guest_field digest)" = "$GUEST_DISK_DIGEST"
check "restarts under libvirt: it read the whole disk as it is" \
  test "$(guest_field disk)" = "$(md5sum < "$REPO/disk.raw" | cut -d' ' -f1)"
check "restarts under libvirt: no I/O error on the console" bash -c "! grep -a -q -i 'I/O error' '$CONSOLE'"
check "restarts under libvirt: the serve stopped by SIGTERM had answered reads" test "$(serve_stat vm2 reads)" -gt 0
virsh_ destroy "$DOM" || fail "virsh destroy"
virsh_ undefine "$DOM" || fail "virsh undefine"
serve_stop vm4
check "restarts under libvirt: the last serve answered reads" test "$(serve_stat vm4 reads)" -gt 0

lvpid=$LIBVIRT_PID
libvirt_stop
check "libvirtd stopped" bash -c "! kill -0 $lvpid 2>/dev/null"

check "the source image is unchanged" test "$(sha256sum < "$REPO/disk.raw")" = "$SHA"
echo "PASS test_libvirt"
