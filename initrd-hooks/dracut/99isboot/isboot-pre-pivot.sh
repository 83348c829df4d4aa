#!/bin/sh
# isboot pre-pivot hook: hand the state of the iSCSI root over to the real root.
#  - /run/isboot/initiatorname.iscsi: the initiator name the root session uses
#    (the real root's iscsid must use the same one to take the session over);
#  - /run/isboot/bootif: the NIC(s) that carry the iSCSI sessions;
#  - the addresses on those NICs become permanent: dracut's dhclient-script sets
#    valid_lft to the DHCP lease time and dhclient dies at switch-root, so the
#    kernel would drop the address (and the root disk with it) when the lease
#    runs out.
# /run survives the switch to the real root.

# shellcheck source=/dev/null
type info > /dev/null 2>&1 || . /lib/dracut-lib.sh

isboot_dir=/run/isboot
mkdir -p "$isboot_dir"

# Initiator name: the one the kernel sessions really use wins.
isboot_iname=
for s in /sys/class/iscsi_session/session*; do
    [ -r "$s/initiatorname" ] || continue
    read -r isboot_iname < "$s/initiatorname"
    [ -n "$isboot_iname" ] && [ "$isboot_iname" != "<NULL>" ] && break
    isboot_iname=
done
if [ -z "$isboot_iname" ] && [ -r /sys/firmware/ibft/initiator/initiator-name ]; then
    read -r isboot_iname < /sys/firmware/ibft/initiator/initiator-name
fi
if [ -z "$isboot_iname" ]; then
    for f in /run/initiatorname.iscsi /etc/iscsi/initiatorname.iscsi; do
        [ -r "$f" ] || continue
        isboot_iname=$(sed -n 's/^InitiatorName=//p' "$f")
        [ -n "$isboot_iname" ] && break
    done
fi
if [ -n "$isboot_iname" ]; then
    echo "InitiatorName=$isboot_iname" > "$isboot_dir/initiatorname.iscsi"
    info "isboot: initiator name $isboot_iname"
fi

# The NICs that reach the iSCSI portals of the open sessions.
: > "$isboot_dir/bootif.new"
for c in /sys/class/iscsi_connection/connection*; do
    [ -r "$c/persistent_address" ] || continue
    read -r isboot_addr < "$c/persistent_address"
    [ -n "$isboot_addr" ] || continue
    # (no head(1) in a dracut initrd: sed prints the first match and quits)
    isboot_dev=$(ip route get "$isboot_addr" 2> /dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p;q')
    [ -n "$isboot_dev" ] || continue
    grep -qx "$isboot_dev" "$isboot_dir/bootif.new" || echo "$isboot_dev" >> "$isboot_dir/bootif.new"
    echo "$isboot_addr" >> "$isboot_dir/portals"
done
mv -f "$isboot_dir/bootif.new" "$isboot_dir/bootif"

while read -r isboot_dev; do
    [ -n "$isboot_dev" ] || continue
    for isboot_cidr in $(ip -o -4 addr show dev "$isboot_dev" scope global | sed -n 's/.* inet \([^ ]*\).*/\1/p'); do
        if ip addr change "$isboot_cidr" dev "$isboot_dev" valid_lft forever preferred_lft forever; then
            info "isboot: $isboot_cidr on $isboot_dev made permanent"
        fi
    done
done < "$isboot_dir/bootif"
