#!/bin/bash
# Build a diskless-ready Debian 12 (bookworm) raw disk image from Debian's
# packages alone: debootstrap, linux-image-amd64, open-iscsi, dracut with the
# isboot module, gawk, GRUB for BIOS and UEFI on one GPT disk, serial console.
#
# Usage: images/debian-12/build.sh [options]
#   --out FILE            output image (default /var/tmp/isboot-images/debian-12.raw)
#   --size SIZE           virtual disk size (default 3G; the file is sparse)
#   --root-password P     root password (default: random, printed once)
#   --autologin           log root in automatically on ttyS0 (lab/CI images)
#   --profile lean|generic  initrd profile (default lean)
#   --mirror URL          Debian mirror (default: the one the host's apt uses)
#   --cache DIR           cache for the debootstrap/package stages
#                         (default /var/tmp/isboot-images/cache/debian-12)
#   --force               rebuild the image even if its inputs did not change
#   -h, --help
# Stages are idempotent: the bootstrap and package stages are cached, and an
# image whose inputs (this recipe, the hooks, the options) did not change is
# left alone. Loop devices and mounts are released on any failure.
set -Eeuo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HOOKS=$REPO/initrd-hooks
SUITE=bookworm

out=/var/tmp/isboot-images/debian-12.raw
size=3G
password=
autologin=0
profile=lean
mirror=
cache=/var/tmp/isboot-images/cache/debian-12
force=0

die() { echo "$PROG: error: $*" >&2; exit 1; }
stage() { printf '[%s %4ds] %s\n' "$PROG" "$((SECONDS))" "$*"; }
usage() { sed -n '2,/^set -E/{/^set -E/d;s/^# \{0,1\}//;p}' "$0"; }

ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=${2:?}; shift 2 ;;
        --size) size=${2:?}; shift 2 ;;
        --root-password) password=${2:?}; shift 2 ;;
        --autologin) autologin=1; shift ;;
        --profile) profile=${2:?}; shift 2 ;;
        --mirror) mirror=${2:?}; shift 2 ;;
        --cache) cache=${2:?}; shift 2 ;;
        --force) force=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "$PROG: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $profile in lean | generic) ;; *) die "--profile must be lean or generic" ;; esac

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, loop devices, mounts and chroot need it): sudo $0 $*"
# Mount in a private mount namespace: a process that enters a new namespace
# meanwhile (ip netns exec, unshare) would otherwise keep a copy of our mounts
# alive and the device busy (e2fsck: "in use"); our mounts also vanish with us.
if [[ -z ${ISBOOT_PRIVATE_MOUNTS:-} ]] && command -v unshare > /dev/null; then
    export ISBOOT_PRIVATE_MOUNTS=1
    exec unshare --mount --propagation private "$0" "${ORIG_ARGS[@]}"
fi
need=(debootstrap parted losetup partx mkfs.ext4 mkfs.vfat mcopy mmd chroot blkid tar truncate sha256sum)
declare -A pkg_of=([debootstrap]=debootstrap [parted]=parted [losetup]=mount [partx]=util-linux
    [mkfs.ext4]=e2fsprogs [mkfs.vfat]=dosfstools [mcopy]=mtools [mmd]=mtools [chroot]=coreutils
    [blkid]=util-linux [tar]=tar [truncate]=coreutils [sha256sum]=coreutils)
for t in "${need[@]}"; do
    command -v "$t" > /dev/null || die "missing tool '$t': apt-get install -y ${pkg_of[$t]}"
done
[[ -x $HOOKS/isboot-rebuild-initrd ]] || die "missing $HOOKS/isboot-rebuild-initrd"

# The only reachable package source may be the host's own mirror: reuse it.
if [[ -z $mirror ]]; then
    mirror=$(grep -rhoE '^(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2> /dev/null |
        grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}
security=${mirror%/debian}/debian-security

# ---- clean-up on any failure ------------------------------------------------
MOUNTS=()
LOOPDEV=
TMPIMG=
cleanup() {
    local rc=$? i
    set +e
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2> /dev/null || umount -l "${MOUNTS[i]}"
    done
    if [[ -n $LOOPDEV ]]; then
        partx -d "$LOOPDEV" 2> /dev/null
        losetup -d "$LOOPDEV"
    fi
    if [[ $rc -ne 0 ]]; then
        [[ -n $TMPIMG ]] && rm -f "$TMPIMG"
        echo "$PROG: failed (exit $rc) at ${SECONDS}s; mounts and loop devices released" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mnt() { mount "$@"; MOUNTS+=("${*: -1}"); }
umnt_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
    MOUNTS=()
}
chroot_mounts() { # DIR
    mnt -t proc proc "$1/proc"
    mnt -t sysfs sysfs "$1/sys"
    mnt --bind /dev "$1/dev"
    mnt --bind /dev/pts "$1/dev/pts"
    mnt -t tmpfs -o mode=755 tmpfs "$1/run"
}
inchroot() { local d=$1; shift; LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive chroot "$d" "$@"; }

mkdir -p "$cache" "$(dirname "$out")"
PACKAGES="linux-image-amd64 dracut dracut-network open-iscsi gawk isc-dhcp-client grub-pc-bin grub-efi-amd64-bin grub2-common zstd e2fsprogs iproute2 iputils-ping procps less nano-tiny ca-certificates"

# ---- stage 1: debootstrap (cached) -------------------------------------------
boot_dir=$cache/debootstrap
if [[ -f $boot_dir/.isboot-stage-done ]] && [[ $(cat "$boot_dir/.isboot-stage-done") == "$SUITE $mirror" ]]; then
    stage "debootstrap: cached ($boot_dir)"
else
    stage "debootstrap $SUITE from $mirror"
    rm -rf "$boot_dir"
    debootstrap --variant=minbase \
        --include=systemd-sysv,udev,kmod,iproute2,e2fsprogs,procps,less,apt-utils,isc-dhcp-client \
        "$SUITE" "$boot_dir" "$mirror" > "$cache/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $cache/debootstrap.log"
    echo "$SUITE $mirror" > "$boot_dir/.isboot-stage-done"
fi

# ---- stage 2: packages (cached tarball) -----------------------------------------
pkg_key="$SUITE $mirror $PACKAGES"
pkg_tar=$cache/rootfs-packages.tar
if [[ -f $pkg_tar && -f $pkg_tar.key ]] && [[ $(cat "$pkg_tar.key") == "$pkg_key" ]]; then
    stage "packages: cached ($pkg_tar)"
else
    stage "packages: $PACKAGES"
    work=$cache/rootfs-packages
    rm -rf "$work"
    cp -a "$boot_dir" "$work"
    rm -f "$work/.isboot-stage-done"
    cat > "$work/etc/apt/sources.list" << SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
SOURCES
    cp /etc/resolv.conf "$work/etc/resolv.conf"
    # dracut must use network-legacy (not systemd-networkd) when the kernel's
    # postinst runs it; the full isboot config is installed in stage 4.
    mkdir -p "$work/etc/dracut.conf.d"
    echo 'add_dracutmodules+=" network-legacy "' > "$work/etc/dracut.conf.d/10-isboot-network.conf"
    chroot_mounts "$work"
    inchroot "$work" apt-get update -q > "$cache/packages.log" 2>&1 || die "apt-get update failed; see $cache/packages.log"
    # shellcheck disable=SC2086
    inchroot "$work" apt-get install -y -q --no-install-recommends $PACKAGES >> "$cache/packages.log" 2>&1 ||
        die "package installation failed; see $cache/packages.log"
    inchroot "$work" apt-get clean
    umnt_all
    rm -f "$work/etc/resolv.conf" "$work/etc/dracut.conf.d/10-isboot-network.conf"
    rm -rf "$work/var/lib/apt/lists/"*
    tar -C "$work" --numeric-owner --xattrs -cf "$pkg_tar.tmp" .
    mv -f "$pkg_tar.tmp" "$pkg_tar"
    echo "$pkg_key" > "$pkg_tar.key"
    rm -rf "$work"
    stage "packages: cached as $pkg_tar ($(du -h "$pkg_tar" | cut -f1))"
fi

# ---- is the image up to date? -------------------------------------------------------
inputs_key=$({
    echo "$pkg_key $size $profile $autologin"
    # the password itself only as a hash; no password given = keep the old one
    [[ -z $password ]] || printf '%s' "$password" | sha256sum
    # contents and paths relative to the checkout: another clone reuses the image
    sha256sum < "$0"
    (cd "$HOOKS" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
} | sha256sum | cut -d' ' -f1)
if [[ $force -eq 0 && -f $out && -f $out.inputs && $(cat "$out.inputs") == "$inputs_key" ]]; then
    stage "image: up to date ($out); use --force to rebuild"
    [[ -n $password ]] || stage "image: root password unchanged (it was printed when the image was built)"
    exit 0
fi

# ---- stage 3: disk layout ---------------------------------------------------------------
TMPIMG=$out.partial
rm -f "$TMPIMG"
stage "disk: $size sparse GPT (BIOS boot 1 MiB, ESP 127 MiB, root ext4) in $TMPIMG"
truncate -s "$size" "$TMPIMG"
parted -s "$TMPIMG" -- mklabel gpt \
    mkpart biosboot 1MiB 2MiB set 1 bios_grub on \
    mkpart ESP fat32 2MiB 129MiB set 2 esp on \
    mkpart root ext4 129MiB 100%
LOOPDEV=$(losetup --find --show "$TMPIMG")
partx -a "$LOOPDEV" # BLKPG: the host kernel may have no partition-table parsers
udevadm settle 2> /dev/null || true
for i in 2 3; do [[ -b ${LOOPDEV}p$i ]] || die "partition ${LOOPDEV}p$i did not appear after partx -a"; done
mkfs.vfat -F 32 -n ISBOOT-ESP "${LOOPDEV}p2" > /dev/null
mkfs.ext4 -q -L isboot-root -E lazy_itable_init=0,lazy_journal_init=0 "${LOOPDEV}p3"
root_uuid=$(blkid -o value -s UUID "${LOOPDEV}p3")
esp_uuid=$(blkid -o value -s UUID "${LOOPDEV}p2")
rootdir=$cache/mnt
mkdir -p "$rootdir"
mnt "${LOOPDEV}p3" "$rootdir"

# ---- stage 4: root filesystem ---------------------------------------------------------------
stage "rootfs: unpacking $(basename "$pkg_tar")"
tar -C "$rootdir" --numeric-owner --xattrs -xf "$pkg_tar"
cat > "$rootdir/etc/fstab" << FSTAB
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$root_uuid / ext4 defaults,errors=remount-ro 0 1
FSTAB
rm -f "$rootdir/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$rootdir/etc/hosts"
: > "$rootdir/etc/machine-id"
rm -f "$rootdir/var/lib/dbus/machine-id"
# No network configuration in the real root: the initrd configured the boot NIC
# and it must stay exactly as it is (the root disk runs over it).
if [[ -z $password ]]; then
    password=$(tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 16 || true)
    gen_password=1
else
    gen_password=0
fi
echo "root:$password" | inchroot "$rootdir" chpasswd
if [[ $autologin -eq 1 ]]; then
    mkdir -p "$rootdir/etc/systemd/system/serial-getty@ttyS0.service.d"
    cat > "$rootdir/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" << 'EOF2'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF2
fi
mkdir -p "$rootdir/etc/systemd/system/multi-user.target.wants"
install -m 755 "$HERE/isboot-marker" "$rootdir/usr/local/sbin/isboot-marker"
install -m 644 "$HERE/isboot-marker.service" "$rootdir/etc/systemd/system/isboot-marker.service"
ln -sf ../isboot-marker.service "$rootdir/etc/systemd/system/multi-user.target.wants/isboot-marker.service"
# A diskless client must not run apt's daily download/upgrade jobs.
for t in apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$rootdir/etc/systemd/system/$t"
done
ln -sf /lib/systemd/system/serial-getty@.service "$rootdir/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service" 2> /dev/null || true
echo "isboot Debian 12 diskless client image (built $(date -u +%Y-%m-%dT%H:%MZ))" > "$rootdir/etc/isboot-image"

# ---- stage 5: isboot hooks + initrd + grub config -----------------------------------------------
stage "initrd: isboot-rebuild-initrd --profile $profile --compare"
chroot_mounts "$rootdir"
"$HOOKS/isboot-rebuild-initrd" --root "$rootdir" --profile "$profile" --compare --no-bootloader

# ---- stage 6: bootloaders -------------------------------------------------------------------
stage "grub: BIOS (i386-pc) into the BIOS boot partition"
inchroot "$rootdir" grub-install --target=i386-pc --boot-directory=/boot --modules="part_gpt ext2" "$LOOPDEV" 2>&1 | sed 's/^/    /'
stage "grub: UEFI (x86_64-efi, removable path EFI/BOOT/BOOTX64.EFI) into the ESP with mtools"
# grub-install refuses an ESP it cannot see mounted as FAT (the host kernel has no
# vfat), so do what it does: copy the modules, make the image, copy it in.
mkdir -p "$rootdir/boot/grub/x86_64-efi"
cp -a "$rootdir/usr/lib/grub/x86_64-efi/." "$rootdir/boot/grub/x86_64-efi/"
cat > "$rootdir/boot/grub/x86_64-efi/load.cfg" << LOADCFG
search.fs_uuid $root_uuid root
set prefix=(\$root)'/boot/grub'
LOADCFG
inchroot "$rootdir" grub-mkimage -O x86_64-efi -o /boot/grub/x86_64-efi/core.efi \
    -c /boot/grub/x86_64-efi/load.cfg -p /boot/grub \
    part_gpt part_msdos ext2 fat search search_fs_uuid normal configfile linux echo test all_video efi_gop serial terminal
# (mtools warns that a loop partition has no geometry; only a failure matters)
mlog=$(MTOOLS_SKIP_CHECK=1 mmd -i "${LOOPDEV}p2" ::/EFI ::/EFI/BOOT 2>&1) || die "mmd failed: $mlog"
mlog=$(MTOOLS_SKIP_CHECK=1 mcopy -i "${LOOPDEV}p2" "$rootdir/boot/grub/x86_64-efi/core.efi" ::/EFI/BOOT/BOOTX64.EFI 2>&1) ||
    die "mcopy failed: $mlog"
stage "grub: kernel command line and grub.cfg"
"$HOOKS/isboot-rebuild-initrd" --root "$rootdir" --profile "$profile" --no-initrd 2>&1 | sed 's/^/    /'
grep -q 'rd.iscsi.firmware=1' "$rootdir/boot/grub/grub.cfg" || die "grub.cfg lacks the isboot kernel command line"
grep -q "root=UUID=$root_uuid" "$rootdir/boot/grub/grub.cfg" || die "grub.cfg does not boot root=UUID=$root_uuid"

kernel=$(find "$rootdir/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)
initrd_size=$(stat -c %s "$rootdir/boot/initrd.img-${kernel#vmlinuz-}")
umnt_all
stage "fsck"
fsck_rc=0
e2fsck -fy "${LOOPDEV}p3" > "$cache/fsck.log" 2>&1 || fsck_rc=$?
if [[ $fsck_rc -eq 8 ]]; then # operational error (device briefly busy): once more
    sleep 3
    fsck_rc=0
    e2fsck -fy "${LOOPDEV}p3" > "$cache/fsck.log" 2>&1 || fsck_rc=$?
fi
if [[ $fsck_rc -gt 1 ]]; then
    tail -n 20 "$cache/fsck.log" >&2
    die "e2fsck exit $fsck_rc on the new root (see $cache/fsck.log)"
fi
partx -d "$LOOPDEV" 2> /dev/null || true
losetup -d "$LOOPDEV"
LOOPDEV=
mv -f "$TMPIMG" "$out"
TMPIMG=
echo "$inputs_key" > "$out.inputs"
stage "done: $out ($(du -h --apparent-size "$out" | cut -f1) virtual, $(du -h "$out" | cut -f1) allocated)"
echo "  root fs UUID $root_uuid, ESP UUID $esp_uuid, kernel $kernel, initrd ($profile) $initrd_size bytes"
if [[ $gen_password -eq 1 ]]; then
    echo "  root password (printed only this once): $password"
else
    echo "  root password: as given with --root-password"
fi
