#!/bin/bash
# dracut module "isboot": re-attach the iSCSI root after iPXE's sanboot hands
# over to Linux, and keep it attached through the real root and shutdown.
#
# Works with dracut's own "iscsi" module and a network module (network-legacy
# preferred: it is the one that understands the iBFT). Boot either from the
# iBFT (rd.iscsi.firmware=1 rd.iscsi.ibft=1), from DHCP's root-path
# (ip=dhcp netroot=dhcp) or from an explicit netroot=iscsi:...
#
# Variables such as $moddir, $initdir, $hookdir, $dracutbasedir and functions
# such as inst_hook come from dracut itself.
# shellcheck disable=SC2154

# NIC drivers a lab or office machine is likely to boot from. Missing ones are
# skipped (instmods without -c), so the list may name drivers a kernel lacks.
isboot_nic_drivers() {
    echo virtio_net virtio_pci e1000 e1000e igb igbvf igc ixgb ixgbe ixgbevf \
        i40e iavf ice r8169 8139cp 8139too tg3 bnx2 bnx2x bnxt_en be2net \
        mlx4_en mlx5_core vmxnet3 pcnet32 ne2k-pci atlantic alx atl1 atl1c \
        atl1e sky2 skge forcedeth via-rhine sfc qede tulip hv_netvsc \
        xen-netfront ena gve
}

# called by dracut
check() {
    require_binaries iscsiadm iscsid iscsi-iname ip || return 1
    # Only when asked for (add_dracutmodules+=" isboot "), never by autodetection.
    return 255
}

# called by dracut
depends() {
    local _net=network
    # dracut's "network" picks systemd-networkd on Debian (its binary ships with
    # systemd); only network-legacy turns the iBFT into an interface config.
    if [[ -d "$dracutbasedir/modules.d/35network-legacy" ]]; then
        _net=network-legacy
    fi
    echo "iscsi $_net rootfs-block"
    return 0
}

# called by dracut
installkernel() {
    # shellcheck disable=SC2046
    hostonly='' instmods iscsi_tcp iscsi_ibft iscsi_boot_sysfs crc32c sd_mod \
        $(isboot_nic_drivers)
}

# called by dracut
install() {
    local _awk
    # dracut's ibft_to_cmdline uses awk's and(); mawk has no and(), so the iBFT
    # NIC would be skipped without a word and the network never comes up.
    _awk=$(find_binary gawk)
    if [[ -z $_awk ]]; then
        derror "isboot: gawk is required (mawk lacks and(), needed to read the iBFT)"
        return 1
    fi
    inst_binary "$_awk" /usr/bin/gawk
    ln_r /usr/bin/gawk /usr/bin/awk
    inst_multiple ip cat mkdir mv sed grep modprobe

    # Debian's iscsid.service runs this before iscsid; dracut does not copy it,
    # so iscsid (and with it the iBFT login) would fail. Ours never fails and
    # makes sure iscsid has an initiator name.
    inst_simple "$moddir/isboot-iscsid-pre.sh" /lib/open-iscsi/startup-checks.sh
    inst_simple "$moddir/isboot-iscsid-pre.sh" /usr/lib/isboot/iscsid-pre.sh
    inst_multiple -o iscsi-iname

    inst_hook pre-pivot 85 "$moddir/isboot-pre-pivot.sh"
    # Same work again at shutdown in the initrd is not needed: the NIC is never
    # taken down by dracut's shutdown, and we bring nothing down ourselves.
}
