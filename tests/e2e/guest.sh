# guest.sh - boot a real Linux guest (Debian kernel, busybox initramfs) from a
# disk under qemu, to test what a VM sees through an NBD export.
# Sourced by e2e tests after lib.sh ($WORK, fail).
#
#   guest_prepare
#       Builds once, cached in ${IDD_GUEST_DIR:-REPO/build/guest}: the kernel of
#       the Debian 12 package linux-image-6.1.0-N-amd64 (apt-get download +
#       dpkg -x, never installed; uncompressed to an ELF vmlinux, which boots
#       faster) and an initramfs of busybox-static, its virtio/ext4 modules
#       and /init.  Sets GUEST_KERNEL GUEST_INITRD GUEST_KVER.
#       IDD_GUEST_KERNEL_PKG=linux-image-... picks another kernel package.
#   guest_make_disk OUT [SIZE_MB]
#       OUT: raw GPT disk (default 64 MiB), partition 1 at 1 MiB holding ext4 of
#       a deterministic slice of this host's /usr.  Sets GUEST_DISK_FILES,
#       GUEST_DISK_DIGEST (what the guest must report) and GUEST_DISK_BYTES.
#   guest_boot DRIVE_SPEC LOG [QEMU_ARGS...]
#       Boots the guest with `-drive DRIVE_SPEC` as its virtio disk (vda), the
#       serial console copied to LOG.  0 only if the guest printed
#       IMGDEDUP-GUEST-OK; then GUEST_RESULT holds the rest of that line and
#       GUEST_SECS the wall time to it.  DRIVE_SPEC examples (a comma inside a
#       path must be doubled):
#         file=disk.raw,format=raw,if=virtio,readonly=on
#         file=nbd:unix:/path/sock:exportname=ID,format=raw,if=virtio,readonly=on
#         file=nbd+unix:///ID?socket=/path/sock,format=raw,if=virtio,readonly=on
#         file=overlay.qcow2,format=qcow2,if=virtio     (guest writes go here)
#       Env: GUEST_APPEND (more kernel cmdline), GUEST_TIMEOUT (s, default 120).
#   guest_field NAME   -> the value of NAME=... in GUEST_RESULT
#   guest_tree_digest DIR -> "FILES DIGEST" as the guest computes them
#
# The guest's /init (kernel cmdline options):
#   imgdedup.mount=auto|ro|rw  ext4 on /dev/vda1 read-only if the disk is
#                              read-only (auto, the default), else read-write
#   imgdedup.dir=SUBDIR        the part of the filesystem to read (default: all)
#   imgdedup.passes=N          N > 1: then read the whole disk (md5sum of
#                              /dev/vda) and every file N more times, the page
#                              cache dropped before each pass ("imgdedup-guest:
#                              pass K start|done" on the console), each pass
#                              reading what the first did
# It lists SUBDIR (ls -laR), md5sums every regular file under it and prints
#   IMGDEDUP-GUEST-OK mode=ro|rw files=N entries=N digest=MD5 [passes=N disk=MD5] [wrote=MD5] uptime=S
# where digest is the md5 of the sorted "md5  ./path" lines (guest_tree_digest
# computes the same on the host).  Read-write, it also writes the list of sums
# (after a header line) to /imgdedup-guest-write, syncs, and reports that
# file's md5 as wrote=.
# Any failure prints IMGDEDUP-GUEST-FAIL <why>; either way it powers off.
#
# A corpus image works as well, e.g. (read-only; only /etc is read, so the TCG
# boot stays short):
#   GUEST_APPEND=imgdedup.dir=etc guest_boot \
#     file=/work/corpus/images/debian12-minbase.raw,format=raw,if=virtio,readonly=on "$WORK/log"
# (make-corpus.sh's GPT images have ext4 in partition 1, as the guest expects;
# debian12-web.raw is MBR with the same layout and works too).

GUEST_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GUEST_EPOCH=1735689600   # 2025-01-01, the corpus's SOURCE_DATE_EPOCH
# insmod order: each module after the ones it depends on (no modprobe/depmod
# in the guest).  crc32c_generic: ext4 asks the crypto API for crc32c, which
# cannot autoload a module without modprobe.
GUEST_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4"

# The guest's /init, run by busybox sh.
read -r -d '' GUEST_INIT <<'INIT' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
# The initramfs has no /dev/console node (cpio is built without root), so the
# kernel gave init no stdio: take the console from devtmpfs.
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
# only emergencies from the kernel from now on: its messages would otherwise
# land in the middle of our marker line
quietk() { echo 1 > /proc/sys/kernel/printk; }
# (if poweroff ever returned, init exiting panics the kernel: panic=-1 reboots,
# and qemu -no-reboot exits)
fin() { quietk; echo "$1"; cd /; umount /mnt 2>/dev/null; sync; poweroff -f; exit 1; }
die() { fin "IMGDEDUP-GUEST-FAIL $*"; }
echo "imgdedup-guest: /init at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
mode=auto dir=. passes=1
for o in $(cat /proc/cmdline); do
  case $o in
    imgdedup.mount=*) mode=${o#*=} ;;
    imgdedup.dir=*) dir=${o#*=} ;;
    imgdedup.passes=*) passes=${o#*=} ;;
  esac
done
for m in $(cat /etc/modules); do
  [ -e /lib/modules/$m.ko ] || continue     # built into this kernel
  insmod /lib/modules/$m.ko || die "insmod $m"
done
i=0
while [ ! -b /dev/vda1 ]; do          # virtio probing is asynchronous
  i=$((i + 1)); [ $i -le 200 ] || die "no /dev/vda1 after 20 s"
  usleep 100000
done
if [ "$mode" = auto ]; then
  mode=rw; [ "$(cat /sys/block/vda/ro)" = 1 ] && mode=ro
fi
case $mode in
  ro) opts=ro,noload ;;      # noload: never replay a journal on a read-only disk
  rw) opts=rw ;;
  *) die "bad imgdedup.mount=$mode" ;;
esac
mount -t ext4 -o $opts /dev/vda1 /mnt || die "mount -o $opts /dev/vda1"
cd "/mnt/$dir" || die "no directory $dir"
entries=$(ls -laR . | wc -l) || die "ls -R"
find . -type f ! -path ./imgdedup-guest-write -exec md5sum {} + > /tmp/sums || die "md5sum"
files=$(wc -l < /tmp/sums)
digest=$(sort /tmp/sums | md5sum | cut -d' ' -f1)
res="mode=$mode files=$files entries=$entries digest=$digest"
if [ "$passes" -gt 1 ]; then
  # a workload: read the whole disk and every file again, from the disk
  # each time (page cache dropped), comparing with the first read
  p=1
  while [ $p -le "$passes" ]; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "imgdedup-guest: pass $p start"
    d=$(md5sum < /dev/vda | cut -d' ' -f1) || die "pass $p: reading /dev/vda"
    [ $p = 1 ] && disk=$d
    [ "$d" = "$disk" ] || die "pass $p: /dev/vda reads $d, pass 1 read $disk"
    find . -type f ! -path ./imgdedup-guest-write -exec md5sum {} + > /tmp/sums2 || die "pass $p: md5sum"
    [ "$(sort /tmp/sums2 | md5sum | cut -d' ' -f1)" = "$digest" ] || die "pass $p: the files read differently"
    echo "imgdedup-guest: pass $p done"
    p=$((p + 1))
  done
  res="$res passes=$passes disk=$disk"
fi
if [ $mode = rw ]; then
  { echo "written by the imgdedup test guest"; sort /tmp/sums; } > /mnt/imgdedup-guest-write &&
    sync || die "write"
  res="$res wrote=$(md5sum < /mnt/imgdedup-guest-write | cut -d' ' -f1)"
fi
fin "IMGDEDUP-GUEST-OK $res uptime=$(cut -d' ' -f1 /proc/uptime)"
INIT

# _guest_kernel_pkg: the linux-image-6.1.0-N-amd64 that apt offers now
_guest_kernel_pkg() {
  if [ -n "${IDD_GUEST_KERNEL_PKG:-}" ]; then echo "$IDD_GUEST_KERNEL_PKG"; return; fi
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9.]+-[0-9]+-amd64$/ { print $2; exit }'
}

# _guest_download DIR: the kernel .deb into DIR
_guest_download() {
  local pkg
  pkg=$(_guest_kernel_pkg)
  [ -n "$pkg" ] && (cd "$1" && apt-get download -q "$pkg") && return 0
  # package lists missing or stale (the mirror dropped that ABI): refresh once
  echo "guest: apt-get update (package lists missing or stale)" >&2
  apt-get update -q >&2 || { echo "guest: apt-get update failed (needs root)" >&2; return 1; }
  pkg=$(_guest_kernel_pkg)
  [ -n "$pkg" ] || { echo "guest: apt offers no linux-image-6.1.0-*-amd64" >&2; return 1; }
  (cd "$1" && apt-get download -q "$pkg")
}

# _guest_extract_vmlinux BZIMAGE OUT: the uncompressed ELF kernel inside the
# bzImage (as the kernel's scripts/extract-vmlinux does).  qemu boots an ELF
# kernel through its PVH entry point: it skips SeaBIOS loading 8 MB over
# fw_cfg and the decompression, which under TCG take about 5 of a 10 s boot.
_guest_extract_vmlinux() {
  python3 - "$1" "$2" <<'PY'
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
for magic, dec in ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor()),
                   (b"\x1f\x8b\x08", lambda: zlib.decompressobj(31))):
    at = data.find(magic)
    while at >= 0:
        try:
            out = dec().decompress(data[at:])
        except (lzma.LZMAError, zlib.error):
            out = b""
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit(1)
PY
}

# _guest_fetch_kernel DEST: vmlinuz, modules/*.ko (uncompressed), version
_guest_fetch_kernel() {
  local dest=$1 tmp kver m f
  tmp=$(mktemp -d "$GUEST_DIR/dl.XXXXXX")
  _guest_download "$tmp" || { rm -rf "$tmp"; return 1; }
  dpkg -x "$tmp"/*.deb "$tmp/x"
  kver=$(ls "$tmp/x/lib/modules")
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp/modules"
  cp "$tmp/x/boot/vmlinuz-$kver" "$dest.tmp/vmlinuz"
  for m in $GUEST_MODULES; do
    f=$(find "$tmp/x/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.*" | head -n 1)
    if [ -z "$f" ]; then
      grep -q "/$m\.ko\$" "$tmp/x/lib/modules/$kver/modules.builtin" && continue
      echo "guest: module $m neither in $kver nor built in" >&2; rm -rf "$tmp"; return 1
    fi
    # busybox insmod may lack the decompressor: decompress here
    case $f in
      *.ko.xz) xz -dc "$f" ;;
      *.ko.zst) zstd -qdc "$f" ;;
      *.ko.gz) gzip -dc "$f" ;;
      *) cat "$f" ;;
    esac > "$dest.tmp/modules/$m.ko"
  done
  _guest_extract_vmlinux "$dest.tmp/vmlinuz" "$dest.tmp/vmlinux" ||
    echo "guest: no ELF vmlinux in the bzImage; booting it as is (slower)" >&2
  echo "$kver $(dpkg-deb -f "$tmp"/*.deb Package) $(dpkg-deb -f "$tmp"/*.deb Version)" > "$dest.tmp/version"
  rm -rf "$tmp" "$dest"; mv "$dest.tmp" "$dest"
}

# _guest_build_initrd KERNELDIR OUT: cpio newc + gzip, byte-reproducible
_guest_build_initrd() {
  local root
  root=$(mktemp -d "$GUEST_DIR/initrd.XXXXXX")
  mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp,etc,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  printf '%s\n' "$GUEST_INIT" > "$root/init"; chmod 755 "$root/init"
  cp "$1"/modules/*.ko "$root/lib/modules/" 2>/dev/null || true
  echo "$GUEST_MODULES" > "$root/etc/modules"
  find "$root" -exec touch -h -d "@$GUEST_EPOCH" {} +
  (cd "$root" && find . | LC_ALL=C sort |
     cpio -o -H newc --owner=0:0 --reproducible --quiet) | gzip -n -6 > "$2.tmp"
  mv "$2.tmp" "$2"; rm -rf "$root"
}

guest_prepare() {
  GUEST_DIR=${IDD_GUEST_DIR:-$GUEST_REPO_ROOT/build/guest}
  mkdir -p "$GUEST_DIR"
  local lock key
  exec {lock}>"$GUEST_DIR/.lock"; flock "$lock"   # tests may run side by side
  if [ ! -s "$GUEST_DIR/kernel/version" ]; then
    echo "guest: fetching the Debian kernel into $GUEST_DIR" >&2
    _guest_fetch_kernel "$GUEST_DIR/kernel" || { exec {lock}>&-; fail "guest: no kernel"; }
  fi
  # a new initramfs when /init, the modules or busybox changed (old ones are
  # kept: a test elsewhere may be about to boot one)
  key=$({ printf '%s\n' "$GUEST_INIT" "$GUEST_MODULES"; cat "$GUEST_DIR/kernel/version"
          sha256sum /bin/busybox; } | sha256sum | cut -c1-16)
  if [ ! -s "$GUEST_DIR/initrd-$key.gz" ]; then
    [ -x /bin/busybox ] || { exec {lock}>&-; fail "guest: /bin/busybox missing (busybox-static)"; }
    _guest_build_initrd "$GUEST_DIR/kernel" "$GUEST_DIR/initrd-$key.gz"
  fi
  exec {lock}>&-
  GUEST_KERNEL=$GUEST_DIR/kernel/vmlinux
  [ -s "$GUEST_KERNEL" ] || GUEST_KERNEL=$GUEST_DIR/kernel/vmlinuz
  GUEST_INITRD=$GUEST_DIR/initrd-$key.gz
  GUEST_KVER=$(cut -d' ' -f1 "$GUEST_DIR/kernel/version")
}

# guest_tree_digest DIR: "FILES DIGEST", computed as the guest's /init does
guest_tree_digest() {
  (cd "$1" && find . -type f ! -path ./imgdedup-guest-write -exec md5sum {} + > "$WORK/.sums" &&
   echo "$(wc -l < "$WORK/.sums") $(LC_ALL=C sort "$WORK/.sums" | md5sum | cut -d' ' -f1)")
}

# _guest_used_inodes FS: used inode numbers (root and >= 11), from dumpe2fs's
# free-inode ranges per group (as make-corpus.sh does)
_guest_used_inodes() {
  dumpe2fs "$1" 2>/dev/null | awk '
    /^Inodes per group:/ { ipg = $4 }
    /^Group [0-9]+:/ { g = $2; sub(":", "", g); g += 0 }
    /^  Free inodes:/ {
      lo = g * ipg + 1; hi = (g + 1) * ipg; delete free
      s = $0; sub(/^  Free inodes: */, "", s); n = split(s, r, /, */)
      for (k = 1; k <= n; k++) if (r[k] != "") {
        m = split(r[k], ab, "-"); for (x = ab[1] + 0; x <= (m > 1 ? ab[2] : ab[1]) + 0; x++) free[x] = 1 }
      for (x = lo; x <= hi; x++) if (!(x in free) && (x == 2 || x >= 11)) print x }'
}

guest_make_disk() {
  local out=$1 mib=${2:-64} tree=$WORK/guest-tree fs=$WORK/guest-fs.ext4 d
  local budget=$(( mib * 1024 * 1024 / 3 ))   # room for metadata and guest writes
  rm -rf "$tree"; mkdir -p "$tree"
  # Real files of mixed kinds, binaries, tiny text files, python source, taken
  # in this order, sorted, until the budget is used.  Only names md5sum prints
  # unescaped on both sides (no spaces, backslashes, newlines).
  for d in /usr/sbin /usr/share/zoneinfo /usr/lib/python3*; do
    if [ -d "$d" ]; then find "$d" -type f -readable -printf '%s %p\n' | LC_ALL=C sort -k2; fi
  done | awk -v b="$budget" '$2 ~ /^[A-Za-z0-9._+\/@,=-]+$/ && NF == 2 && !full {
           if (t + $1 > b) full = 1; else { t += $1; print substr($2, 2) } }' > "$WORK/guest-tree.list"
  tar -C / --no-recursion -cf - -T "$WORK/guest-tree.list" | tar -C "$tree" -xf -
  find "$tree" -exec touch -h -d "@$GUEST_EPOCH" {} +
  read -r GUEST_DISK_FILES GUEST_DISK_DIGEST < <(guest_tree_digest "$tree")
  GUEST_DISK_BYTES=$(du -sb "$tree" | cut -f1)
  rm -f "$fs"
  E2FSPROGS_FAKE_TIME=$GUEST_EPOCH mkfs.ext4 -q -F -b 4096 -T default -L guest \
    -U 6b1b6c4e-1c2d-4b8f-9a0e-1f2e3d4c5b6b \
    -E hash_seed=6b1b6c4e-1c2d-4b8f-9a0e-1f2e3d4c5b6b,root_owner=0:0,nodiscard \
    -d "$tree" "$fs" "$((mib - 2))M" >/dev/null || fail "guest: mkfs.ext4"
  # mkfs -d copies each file's ctime, which user space cannot set: pin them
  _guest_used_inodes "$fs" | awk -v t="@$GUEST_EPOCH" \
    '{ print "sif <" $1 "> ctime " t; print "sif <" $1 "> atime " t }' > "$fs.cmds"
  E2FSPROGS_FAKE_TIME=$GUEST_EPOCH debugfs -w -f "$fs.cmds" "$fs" >/dev/null 2>&1 || fail "guest: debugfs"
  rm -f "$out"; truncate -s "${mib}M" "$out"
  sfdisk -q --no-reread --no-tell-kernel "$out" <<EOF || fail "guest: sfdisk"
label: gpt
label-id: 5a1f0c3e-7d2b-4e6a-9c8d-0b1a2c3d4e5f
unit: sectors
first-lba: 2048
start=2048, size=$(( (mib - 2) * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5a1f0c3e-7d2b-4e6a-9c8d-0b1a2c3d4e60, name="root"
EOF
  dd if="$fs" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -rf "$tree" "$fs" "$fs.cmds"
  echo "guest: disk $out: $mib MiB, $GUEST_DISK_FILES files, $GUEST_DISK_BYTES bytes, digest $GUEST_DISK_DIGEST"
}

# _guest_us: wall clock in microseconds
_guest_us() { local t=$EPOCHREALTIME; echo $(( ${t/./} )); }
_guest_secs() { local d=$(( ($(_guest_us) - $1) / 10000 )); printf '%d.%02d' $((d / 100)) $((d % 100)); }

# _guest_tee LOG T0: copy the console to LOG, noting when a marker shows up
_guest_tee() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    printf '%s\n' "$line"
    case $line in *IMGDEDUP-GUEST-OK*|*IMGDEDUP-GUEST-FAIL*)
      echo "host: marker after $(_guest_secs "$2") s" ;;
    esac
  done > "$1"
}

guest_boot() {
  guest_boot_start "$@"
  guest_boot_wait
}

# guest_boot_start DRIVE_SPEC LOG [QEMU_ARGS...]: guest_boot in the
# background (an empty DRIVE_SPEC: no -drive, the disk is in QEMU_ARGS);
# guest_boot_wait waits for it and returns what guest_boot would;
# guest_wait_line REGEX waits (as long as the guest runs) for a console line
guest_boot_start() {
  local drive=$1 log=$2
  shift 2
  guest_prepare
  GUEST_RESULT= GUEST_SECS= GUEST_LOG=$log
  GUEST_T0=$(_guest_us)
  local disk=()
  [ -z "$drive" ] || disk=(-drive "$drive")
  : > "$log"
  # tcg, not kvm: kvm hangs under the nested virtualisation of our machines
  { timeout -k 5 "${GUEST_TIMEOUT:-120}" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
      -nographic -no-reboot -net none \
      -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
      -append "console=ttyS0 panic=-1 ${GUEST_APPEND:-}" \
      "${disk[@]}" "$@" < /dev/null 2>&1 | _guest_tee "$log" "$GUEST_T0"
    exit "${PIPESTATUS[0]}"; } &
  GUEST_JOB=$!
}

guest_wait_line() {
  while kill -0 "$GUEST_JOB" 2>/dev/null; do
    grep -a -q -E "$1" "$GUEST_LOG" && return 0
    sleep 0.1
  done
  grep -a -q -E "$1" "$GUEST_LOG"
}

guest_boot_wait() {
  local log=$GUEST_LOG rc=0 line
  wait "$GUEST_JOB" || rc=$?
  local total; total=$(_guest_secs "$GUEST_T0")
  line=$(grep -a -o 'IMGDEDUP-GUEST-OK .*' "$log" | head -n 1) || true
  if [ -z "$line" ]; then
    echo "guest_boot: no IMGDEDUP-GUEST-OK (qemu status $rc after $total s); end of $log:" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    return 1
  fi
  GUEST_RESULT=${line#IMGDEDUP-GUEST-OK }
  GUEST_SECS=$(sed -n 's/^host: marker after \(.*\) s$/\1/p' "$log" | head -n 1)
  echo "guest_boot: marker after $GUEST_SECS s (qemu done after $total s): $GUEST_RESULT"
}

guest_field() { local f; for f in $GUEST_RESULT; do [ "${f%%=*}" = "$1" ] && echo "${f#*=}"; done; return 0; }
