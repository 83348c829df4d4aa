#!/bin/bash
# Tests for initrd-hooks/ and images/: shellcheck on every script, and the
# contents of the recipe image's initrd (lsinitrd run inside the image).
#
# Usage: tests/initrd_test.sh [--image FILE] [--rebuild]
#   --image FILE  image to inspect (default /var/tmp/isboot-images/debian-12.raw;
#                 the image checks are skipped with a note when it does not exist)
#   --rebuild     also run isboot-rebuild-initrd (lean, --compare) on a sparse copy
#                 of the image and inspect that result (slow: a few minutes)
# Needs root for the image checks (loop device, read-only mount, chroot).
set -Euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
image=/var/tmp/isboot-images/debian-12.raw
rebuild=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --image) image=${2:?}; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        *) echo "usage: $0 [--image FILE] [--rebuild]" >&2; exit 2 ;;
    esac
done

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "ok   - $*"; }
notok() { failed=$((failed + 1)); echo "FAIL - $*"; }
skip() { skipped=$((skipped + 1)); echo "skip - $*"; }

# ---- shellcheck ------------------------------------------------------------------
scripts=(
    "$REPO/initrd-hooks/isboot-rebuild-initrd"
    "$REPO"/initrd-hooks/dracut/99isboot/*.sh
    "$REPO/initrd-hooks/rootfs/usr/lib/isboot/isboot-initiatorname"
    "$REPO/initrd-hooks/rootfs/usr/lib/isboot/isboot-seal"
    "$REPO/images/debian-12/build.sh"
    "$REPO/images/debian-12/isboot-marker"
    "$REPO"/scripts/lab-reference
    "$REPO"/scripts/lib/qemu-lab.sh
    "$REPO"/tests/*.sh
)
if command -v shellcheck > /dev/null; then
    for s in "${scripts[@]}"; do
        shell="sh"
        head -n 1 "$s" | grep -q bash && shell=bash
        [[ ${s##*/} == module-setup.sh ]] && shell=bash
        if out=$(shellcheck -x -s "$shell" "$s" 2>&1); then ok "shellcheck ${s#"$REPO"/}"; else notok "shellcheck ${s#"$REPO"/}"; echo "$out"; fi
    done
else
    notok "shellcheck is not installed (apt-get install -y shellcheck)"
fi

# ---- the dracut module is well-formed ------------------------------------------------
mod=$REPO/initrd-hooks/dracut/99isboot/module-setup.sh
for f in check depends installkernel install; do
    if bash -c ". '$mod'; declare -F $f" > /dev/null 2>&1; then ok "module-setup.sh defines $f()"; else notok "module-setup.sh lacks $f()"; fi
done
drivers=$(bash -c ". '$mod'; isboot_nic_drivers")
for d in virtio_net e1000 e1000e igb igc ixgbe r8169 tg3 bnx2; do
    if grep -qw "$d" <<< "$drivers"; then ok "NIC driver list names $d"; else notok "NIC driver list lacks $d"; fi
done

# ---- the initrd inside the image ----------------------------------------------------------
LOOP=
MNT=
COPY=
cleanup() {
    set +e
    if [[ -n $MNT ]]; then
        umount "$MNT/proc" "$MNT/dev" 2> /dev/null
        umount "$MNT"
        rmdir "$MNT"
    fi
    if [[ -n $LOOP ]]; then partx -d "$LOOP" 2> /dev/null; losetup -d "$LOOP"; fi
    [[ -n $COPY ]] && rm -f "$COPY"
}
trap cleanup EXIT

inspect() { # IMAGE LABEL
    local img=$1 label=$2 listing kv f
    LOOP=$(losetup --find --show --read-only "$img")
    partx -a "$LOOP" 2> /dev/null || true
    MNT=$(mktemp -d /tmp/isboot-test.XXXXXX)
    mount -o ro "${LOOP}p3" "$MNT"
    mount --bind /dev "$MNT/dev"
    mount -t proc proc "$MNT/proc"
    kv=$(find "$MNT/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
    listing=$(chroot "$MNT" lsinitrd "/boot/initrd.img-$kv" 2> /dev/null)
    echo "# $label: /boot/initrd.img-$kv, $(stat -c %s "$MNT/boot/initrd.img-$kv") bytes"
    for m in isboot iscsi network-legacy rootfs-block; do
        if sed -n '/^dracut modules:/,/^=/p' <<< "$listing" | grep -qx "$m"; then ok "$label: dracut module $m"; else notok "$label: dracut module $m missing"; fi
    done
    for f in dracut/hooks/pre-pivot/85-isboot-pre-pivot.sh usr/lib/open-iscsi/startup-checks.sh usr/bin/gawk \
        usr/sbin/iscsid usr/sbin/iscsiadm usr/sbin/dhclient usr/lib/systemd/system/iscsid.service; do
        if grep -q "$f" <<< "$listing"; then ok "$label: has $f"; else notok "$label: lacks $f"; fi
    done
    if grep -qE 'usr/bin/awk -> (/usr/bin/)?gawk' <<< "$listing"; then ok "$label: awk is gawk"; else notok "$label: awk is not gawk"; fi
    for d in iscsi_tcp iscsi_ibft virtio_net e1000 e1000e igb igc ixgbe r8169 tg3 bnx2 sd_mod ext4; do
        if grep -qE "/$d\\.ko(\\.(xz|zst|gz))?\$" <<< "$listing"; then ok "$label: driver $d.ko"; else notok "$label: driver $d.ko missing"; fi
    done
    if grep -q "root=UUID=$(blkid -o value -s UUID "${LOOP}p3")" "$MNT/boot/grub/grub.cfg" &&
        grep -q 'rd.iscsi.firmware=1 rd.iscsi.ibft=1' "$MNT/boot/grub/grub.cfg"; then
        ok "$label: grub.cfg boots root=UUID= with the iBFT command line"
    else
        notok "$label: grub.cfg lacks root=UUID= or the iBFT command line"
    fi
    if grep -qE '^node.session.timeo.replacement_timeout = 86400$' "$MNT/etc/iscsi/iscsid.conf"; then ok "$label: iscsid.conf queues I/O through session outages"; else notok "$label: iscsid.conf keeps the 120 s replacement_timeout"; fi
    if [[ ! -s $MNT/etc/machine-id ]]; then ok "$label: empty machine-id"; else notok "$label: machine-id is set"; fi
    if ! grep -q '^InitiatorName=' "$MNT/etc/iscsi/initiatorname.iscsi"; then ok "$label: no fixed initiator name"; else notok "$label: fixed initiator name baked in"; fi
    if [[ -L $MNT/etc/systemd/system/sysinit.target.wants/isboot-initiatorname.service ]]; then ok "$label: isboot-initiatorname.service enabled"; else notok "$label: isboot-initiatorname.service not enabled"; fi
    if grep -qx 'Environment=OPENSSL_CONF=/dev/null' "$MNT/etc/systemd/system/iscsid.service.d/isboot.conf" 2> /dev/null; then ok "$label: iscsid reads no OpenSSL config from the root disk (CHAP takeover)"; else notok "$label: iscsid.service lacks the isboot drop-in (a CHAP takeover hangs)"; fi
    if [[ -L $MNT/etc/systemd/system/multi-user.target.wants/isboot-seal.service && -x $MNT/usr/lib/isboot/isboot-seal ]]; then ok "$label: isboot-seal.service enabled"; else notok "$label: isboot-seal.service not enabled"; fi
    if MTOOLS_SKIP_CHECK=1 mdir -i "${LOOP}p2" ::/EFI/BOOT/BOOTX64.EFI > /dev/null 2>&1; then ok "$label: ESP has EFI/BOOT/BOOTX64.EFI"; else notok "$label: ESP lacks EFI/BOOT/BOOTX64.EFI"; fi
    cleanup
    LOOP="" MNT="" COPY=""
}

if [[ $(id -u) -ne 0 ]]; then
    skip "image checks need root"
elif [[ ! -f $image ]]; then
    skip "no image at $image (build: images/debian-12/build.sh --root-password isboot --autologin)"
else
    inspect "$image" "$(basename "$image")"
    if [[ $rebuild -eq 1 ]]; then
        COPY=$(mktemp /var/tmp/isboot-test-copy.XXXXXX.raw)
        cp --sparse=always "$image" "$COPY"
        if out=$("$REPO/initrd-hooks/isboot-rebuild-initrd" --profile lean --compare "$COPY" 2>&1); then
            ok "isboot-rebuild-initrd --profile lean --compare on a copy"
            grep -E 'size:|rebuilt' <<< "$out"
            c=$COPY
            inspect "$c" "rebuilt copy"
            rm -f "$c"
        else
            notok "isboot-rebuild-initrd failed on a copy"
            echo "$out" | tail -n 20
        fi
    fi
fi

echo "$passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
