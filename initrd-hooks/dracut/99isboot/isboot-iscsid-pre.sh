#!/bin/sh
# isboot: non-fatal stand-in for Debian's /lib/open-iscsi/startup-checks.sh in
# the initrd. iscsid needs /etc/iscsi/iscsid.conf and an initiator name; take
# the name from the iBFT when there is one, else from what dracut wrote, else
# generate a fresh one. Never fails: a missing name must not stop the login.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
NAMEFILE=/etc/iscsi/initiatorname.iscsi

mkdir -p /etc/iscsi
[ -e /etc/iscsi/iscsid.conf ] || : > /etc/iscsi/iscsid.conf

if [ -f "$NAMEFILE" ] && grep -q '^InitiatorName=[^[:space:]]' "$NAMEFILE"; then
    exit 0
fi

name=
# Even when booting from DHCP's root-path, iPXE's iBFT (if any) holds the
# client's stable initiator name: prefer it to a random one.
[ -e /sys/firmware/ibft ] || modprobe -q iscsi_ibft 2> /dev/null
if [ -r /sys/firmware/ibft/initiator/initiator-name ]; then
    read -r name < /sys/firmware/ibft/initiator/initiator-name
fi
if [ -z "$name" ] && [ -r /run/initiatorname.iscsi ]; then
    name=$(sed -n 's/^InitiatorName=//p' /run/initiatorname.iscsi)
fi
if [ -z "$name" ] && command -v iscsi-iname > /dev/null 2>&1; then
    name=$(iscsi-iname)
fi
if [ -n "$name" ]; then
    rm -f "$NAMEFILE"
    echo "InitiatorName=$name" > "$NAMEFILE"
fi
exit 0
