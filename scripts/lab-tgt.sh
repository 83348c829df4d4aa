#!/bin/bash
# Stand-in boot lab (dnsmasq + tgt) for the isboot client image, used while
# isboot's own target is being written. Everything lives in a private network
# namespace: a bridge, one tap per client, tgtd (control port 9, portal on the
# bridge) and dnsmasq (DHCP with root-path, no boot file; RAs). QEMU clients
# sanboot through their NIC's iPXE ROM, under TCG when /dev/kvm is kvm_pvm
# (it cannot run firmware). The machine's real interfaces are never touched.
#
# Usage: scripts/lab-tgt.sh [options] [STEP...]
#   --image FILE   base image (default /var/tmp/isboot-images/debian-12.raw)
#   --work DIR     per-run directory for clones, serial logs, leases
#                  (default /var/tmp/isboot-lab.<pid>, removed unless --keep)
#   --keep         keep the work directory (clones, serial logs)
#   --timeout S    seconds a boot may take to reach the marker (default 600)
#   --nic MODEL    virtio-net-pci (default) or e1000
# Steps (default: all, in this order):
#   bios       boot clone "alpha" in BIOS mode (SeaBIOS + iPXE ROM) to the marker
#   restart    in alpha: restart iscsid, drop the TCP connection at the target,
#              then write+read through the root: must keep working
#   poweroff   alpha: clean poweroff (systemctl poweroff), host e2fsck -n clean
#   uefi       boot clone "beta" in UEFI mode (OVMF + iPXE EFI ROM) to the
#              marker while alpha boots again (BIOS); alpha's second boot must
#              show boots=2 and no journal recovery; identities must differ
# Exit status 0 when every step passed. Prints the last 40 serial lines of a
# client whose step failed.
set -Eeuo pipefail

PROG=${0##*/}
image=/var/tmp/isboot-images/debian-12.raw
work=
keep=0
timeout=600
nic=virtio-net-pci
steps=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --image) image=${2:?}; shift 2 ;;
        --work) work=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --nic) nic=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,/^set -E/{/^set -E/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        bios | restart | poweroff | uefi) steps+=("$1"); shift ;;
        *) echo "$PROG: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ ${#steps[@]} -gt 0 ]] || steps=(bios restart poweroff uefi)

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { printf '[%s %4ds] %s\n' "$PROG" "$SECONDS" "$*"; }
[[ $(id -u) -eq 0 ]] || die "must run as root (network namespace, tgtd, QEMU taps)"
for t in ip tgtd tgtadm dnsmasq qemu-system-x86_64 e2fsck losetup partx; do
    command -v "$t" > /dev/null || die "missing tool '$t' (apt-get install -y iproute2 tgt dnsmasq-base qemu-system-x86 e2fsprogs util-linux)"
done
PY=/usr/bin/python3
[[ -x $PY ]] || die "missing /usr/bin/python3 (apt-get install -y python3)"
[[ -f $image ]] || die "no image at $image (build it: images/debian-12/build.sh --root-password isboot --autologin)"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd

# ---- names unique to this run ------------------------------------------------
id=$$
NS=isblab$id
BR=isbr0 # inside our own namespace, so it cannot clash
SERVER=10.77.0.1
# tgtd control port: 7 may belong to someone else's tgtd, and another lab run
# may hold 9: take the first one nobody answers on.
CTL=
for p in $(seq 9 60); do
    if ! tgtadm -C "$p" --mode system --op show > /dev/null 2>&1; then CTL=$p; break; fi
done
[[ -n $CTL ]] || die "no free tgtd control port in 9..60"
work=${work:-/var/tmp/isboot-lab.$id}
mkdir -p "$work"
PIDS=()

cleanup() {
    local rc=$? p
    set +e
    trap - ERR
    # tgtd ignores SIGTERM while it has targets: ask it to exit first.
    tgtadm -C "$CTL" --op delete --mode system > /dev/null 2>&1
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2> /dev/null; done
    ip netns del "$NS" 2> /dev/null
    if [[ $keep -eq 0 && $rc -eq 0 ]]; then rm -rf "$work"; else echo "$PROG: kept $work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "$PROG: unexpected failure at line $LINENO" >&2' ERR
nsx() { ip netns exec "$NS" "$@"; }
# For background jobs: exec, so that $! is the PID of the program itself.
nsx_exec() { exec ip netns exec "$NS" "$@"; }

# ---- clients -------------------------------------------------------------------
declare -A MAC=([alpha]=52:54:00:77:00:11 [beta]=52:54:00:77:00:12)
declare -A IPADDR=([alpha]=10.77.0.11 [beta]=10.77.0.12)
declare -A TID=([alpha]=1 [beta]=2)
IQN_PREFIX=iqn.2026-11.lab
clients=(alpha beta)

log "clones of $image"
for c in "${clients[@]}"; do
    cp --sparse=always "$image" "$work/$c.raw"
done

# ---- namespace, bridge, taps -----------------------------------------------------
log "netns $NS: bridge $BR $SERVER/24, taps"
ip netns add "$NS"
nsx ip link set lo up
nsx ip link add "$BR" type bridge
nsx ip addr add "$SERVER/24" dev "$BR"
nsx ip addr add fd77::1/64 dev "$BR" nodad
nsx ip link set "$BR" up
for c in "${clients[@]}"; do
    nsx ip tuntap add dev "tap-$c" mode tap
    nsx ip link set "tap-$c" master "$BR" up
done

# ---- tgtd -----------------------------------------------------------------------
log "tgtd -C $CTL, portal $SERVER:3260"
nsx_exec tgtd -f -C "$CTL" --iscsi "portal=$SERVER:3260" > "$work/tgtd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do tgtadm -C "$CTL" --lld iscsi --mode target --op show > /dev/null 2>&1 && break; sleep 0.2; done
kill -0 "${PIDS[-1]}" 2> /dev/null || die "tgtd did not start: $(cat "$work/tgtd.log")"
for c in "${clients[@]}"; do
    tgtadm -C "$CTL" --lld iscsi --mode target --op new --tid "${TID[$c]}" --targetname "$IQN_PREFIX:$c"
    tgtadm -C "$CTL" --lld iscsi --mode logicalunit --op new --tid "${TID[$c]}" --lun 1 --backing-store "$work/$c.raw"
    tgtadm -C "$CTL" --lld iscsi --mode target --op bind --tid "${TID[$c]}" --initiator-address ALL
done

# ---- dnsmasq ----------------------------------------------------------------------
log "dnsmasq: DHCP (root-path, hostname, no boot file) + RA"
# shellcheck disable=SC2054 # commas belong to dnsmasq option values
dargs=(--keep-in-foreground --no-resolv --no-hosts --port=0 --interface="$BR" --bind-interfaces
    --dhcp-authoritative --dhcp-leasefile="$work/leases" --log-dhcp
    --dhcp-range="10.77.0.100,10.77.0.200,255.255.255.0,12h" --dhcp-range=::,constructor:"$BR",ra-only
    --enable-ra --dhcp-option=encap:175,176,1)
for c in "${clients[@]}"; do
    dargs+=(--dhcp-host="${MAC[$c]},set:$c,${IPADDR[$c]},$c"
        --dhcp-option="tag:$c,option:root-path,iscsi:$SERVER::3260:1:$IQN_PREFIX:$c")
done
nsx_exec dnsmasq "${dargs[@]}" > "$work/dnsmasq.log" 2>&1 &
PIDS+=($!)

# ---- QEMU ---------------------------------------------------------------------------
accel=(-accel tcg -cpu max)
if [[ -e /dev/kvm && ! -e /sys/module/kvm_pvm ]]; then accel=(-accel kvm -cpu host); fi
declare -A QPID=()
boot() { # NAME MODE(bios|uefi) RUN
    local c=$1 mode=$2 run=$3 fw=()
    local serial=$work/$c.$run.serial
    if [[ $mode == uefi ]]; then
        cp "$OVMF_VARS" "$work/$c.vars.fd"
        fw=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$work/$c.vars.fd")
    fi
    : > "$serial"
    nsx_exec qemu-system-x86_64 -name "isboot-lab-$c" "${accel[@]}" -m 1024 -smp 1 "${fw[@]}" \
        -vga none -display none -no-user-config -nodefaults \
        -chardev "socket,id=ser0,path=$work/$c.sock,server=on,wait=off,logfile=$serial" -serial chardev:ser0 \
        -monitor "unix:$work/$c.mon,server,nowait" \
        -netdev "tap,id=net0,ifname=tap-$c,script=no,downscript=no" \
        -device "$nic,netdev=net0,mac=${MAC[$c]}" -boot n \
        > "$work/$c.$run.qemu.log" 2>&1 &
    QPID[$c]=$!
    PIDS+=($!)
    echo "$SECONDS" > "$work/$c.$run.start"
    log "boot $c ($mode, run $run): qemu pid ${QPID[$c]}, serial $serial"
}
# The serial log without CRs and terminal escapes (bash's bracketed-paste
# toggles precede command output on the same line).
clean() { tr -d '\r' < "$1" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'; }
tail_serial() { echo "---- last 40 serial lines of $1 ----"; clean "$2" | tail -n 40; echo "----"; }
wait_for() { # NAME RUN REGEX TIMEOUT
    local c=$1 run=$2 re=$3 t=$4 start=$SECONDS
    while ((SECONDS - start < t)); do
        if clean "$work/$c.$run.serial" | grep -aEq "$re"; then return 0; fi
        if ! kill -0 "${QPID[$c]}" 2> /dev/null; then
            clean "$work/$c.$run.serial" | grep -aEq "$re" && return 0
            echo "$PROG: qemu for $c exited while waiting for /$re/" >&2
            return 1
        fi
        sleep 2
    done
    echo "$PROG: timeout after ${t}s waiting for /$re/ on $c" >&2
    return 1
}
send() { # NAME TEXT: type a line on the serial console
    "$PY" - "$work/$1.sock" "$2" << 'PYEOF'
import socket, sys, time
# QEMU reads the socket only as fast as the guest's 16-byte UART FIFO drains and
# drops what is unread when the client hangs up: feed it slowly, then linger.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
data = sys.argv[2].encode() + b"\r"
for i in range(0, len(data), 8):
    s.sendall(data[i:i + 8])
    time.sleep(0.05)
time.sleep(2)
s.close()
PYEOF
}
marker() { clean "$work/$1.$2.serial" | grep -aE '^ISBOOT-MARKER' | tail -n 1 || true; }
field() { sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<< "$1"; }
wait_exit() { # NAME TIMEOUT
    local start=$SECONDS
    while kill -0 "${QPID[$1]}" 2> /dev/null; do
        ((SECONDS - start < $2)) || return 1
        sleep 2
    done
}
boot_to_marker() { # NAME MODE RUN
    local c=$1 run=$3
    if ! wait_for "$c" "$run" '^ISBOOT-MARKER' "$timeout"; then
        tail_serial "$c" "$work/$c.$run.serial"
        return 1
    fi
    local m
    m=$(marker "$c" "$run")
    log "$c run $run ($2): marker after $((SECONDS - $(cat "$work/$c.$run.start"))) s: $m"
}
fsck_clone() { # NAME
    local loop rc=0
    loop=$(losetup --find --show --read-only "$work/$1.raw")
    partx -a "$loop" 2> /dev/null || true
    e2fsck -fn "${loop}p3" > "$work/$1.fsck" 2>&1 || rc=$?
    partx -d "$loop" 2> /dev/null || true
    losetup -d "$loop"
    tail -n 1 "$work/$1.fsck"
    return "$rc"
}

results=()
pass() { results+=("PASS $*"); log "PASS $*"; }
fail() { results+=("FAIL $*"); log "FAIL $*"; }
has() { local s; for s in "${steps[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

alpha_run=0
if has bios; then
    alpha_run=1
    boot alpha bios 1
    if boot_to_marker alpha bios 1; then pass "bios: alpha reached the marker"; else fail "bios: alpha did not reach the marker"; fi
fi

if has restart && [[ $alpha_run -eq 1 ]] && kill -0 "${QPID[alpha]}" 2> /dev/null; then
    wait_for alpha 1 'root@alpha:~#' 60 || true
    send alpha ""
    # 1) iscsid restarted in the running system; 2) the target drops the TCP
    # connection; the root must keep working through both.
    send alpha "systemctl restart iscsid.service; sleep 5; iscsiadm -m session; echo ISBOOT-STEP iscsid-restarted"
    if wait_for alpha 1 '^ISBOOT-STEP iscsid-restarted' 120; then
        sid=$(tgtadm -C "$CTL" --lld iscsi --mode conn --op show --tid "${TID[alpha]}" 2> /dev/null | sed -n 's/^Session: \([0-9]*\).*/\1/p' | head -n 1)
        if [[ -n $sid ]]; then
            tgtadm -C "$CTL" --lld iscsi --mode conn --op delete --tid "${TID[alpha]}" --sid "$sid" --cid 0 && log "target dropped alpha's connection (session $sid)"
        fi
        send alpha "sleep 20; dd if=/dev/urandom of=/root/after-restart bs=1M count=8 status=none && sync && echo 3 > /proc/sys/vm/drop_caches && sha256sum /root/after-restart > /root/after-restart.sha && sha256sum -c /root/after-restart.sha && systemctl is-active iscsid && echo ISBOOT-STEP io-ok"
        if wait_for alpha 1 '^ISBOOT-STEP io-ok' 300; then
            pass "restart: root I/O works after an iscsid restart and a dropped connection"
            # The boot NIC's address must not expire with the DHCP lease (dhclient
            # is gone after switch-root), and the real root must use the session's
            # initiator name.
            send alpha "ip -o -4 addr show scope global | sed 's/^/ISBOOT-ADDR /'; sed 's/^/ISBOOT-INAME /' /etc/iscsi/initiatorname.iscsi /run/isboot/initiatorname.iscsi; echo ISBOOT-STEP state-shown"
            if wait_for alpha 1 '^ISBOOT-STEP state-shown' 120; then
                addr=$(clean "$work/alpha.1.serial" | grep -a '^ISBOOT-ADDR ' | tail -n 1 || true)
                log "alpha: ${addr#ISBOOT-ADDR }"
                # (serial output may garble a character now and then: look at two fields)
                if [[ -n $addr ]] && ! grep -q ' dynamic ' <<< "$addr" && grep -qE '(valid_l+ft|preferred_lft) forever' <<< "$addr"; then pass "address: boot NIC address is permanent (valid_lft forever)"; else fail "address: boot NIC address expires: $addr"; fi
                inames=$(clean "$work/alpha.1.serial" | grep -a '^ISBOOT-INAME InitiatorName=' | sort -u || true)
                if [[ $(wc -l <<< "$inames") -eq 1 && -n $inames ]]; then pass "initiator: real root uses the session's name (${inames#ISBOOT-INAME })"; else fail "initiator: names differ: $inames"; fi
            else
                fail "state: no answer from alpha's console"
            fi
        else
            fail "restart: root I/O failed after iscsid restart/connection drop"
            tail_serial alpha "$work/alpha.1.serial"
        fi
    else
        fail "restart: no answer from alpha's console"
        tail_serial alpha "$work/alpha.1.serial"
    fi
fi

if has poweroff && [[ $alpha_run -eq 1 ]] && kill -0 "${QPID[alpha]}" 2> /dev/null; then
    send alpha "systemctl poweroff"
    if wait_exit alpha 300; then
        if clean "$work/alpha.1.serial" | grep -aq 'reboot: Power down'; then
            log "alpha powered off: $(clean "$work/alpha.1.serial" | grep -a 'reboot: Power down' | tail -n 1)"
        fi
        if out=$(fsck_clone alpha); then
            pass "poweroff: clean poweroff, e2fsck -fn on alpha's root: $out"
        else
            fail "poweroff: alpha's root not clean after poweroff: $out"
        fi
    else
        fail "poweroff: alpha did not power off within 300 s"
        tail_serial alpha "$work/alpha.1.serial"
    fi
fi

if has uefi; then
    boot beta uefi 1
    second=0
    if [[ $alpha_run -eq 1 ]] && ! kill -0 "${QPID[alpha]}" 2> /dev/null; then
        boot alpha bios 2
        second=1
    fi
    if boot_to_marker beta uefi 1; then pass "uefi: beta reached the marker"; else fail "uefi: beta did not reach the marker"; fi
    if [[ $second -eq 1 ]]; then
        if boot_to_marker alpha bios 2; then
            m=$(marker alpha 2)
            if [[ $(field "$m" boots) == 2 ]]; then pass "persistence: alpha's second boot shows boots=2"; else fail "persistence: alpha's second boot: $m"; fi
            if clean "$work/alpha.2.serial" | grep -aqiE 'recovering journal|recovery complete|orphan'; then
                fail "fsck: alpha's second boot recovered the journal (unclean shutdown)"
            else
                pass "fsck: alpha's second boot mounted a clean root (no journal recovery)"
            fi
            ma=$m
            mb=$(marker beta 1)
            ok=1
            for f in host initiator machine_id; do
                va=$(field "$ma" "$f")
                vb=$(field "$mb" "$f")
                log "identity $f: alpha=$va beta=$vb"
                if [[ -z $va || -z $vb || $va == "$vb" ]]; then ok=0; fi
            done
            if [[ $ok -eq 1 ]]; then pass "identity: two clones have different hostnames, initiator names, machine-ids"; else fail "identity: clones share an identity"; fi
        else
            fail "persistence: alpha's second boot did not reach the marker"
        fi
    fi
    for c in beta alpha; do
        kill -0 "${QPID[$c]:-0}" 2> /dev/null || continue
        send "$c" "systemctl poweroff"
        wait_exit "$c" 300 || log "$c did not power off in time"
    done
fi

echo "==== $PROG results ===="
npass=0
nfail=0
for r in "${results[@]}"; do
    echo "$r"
    if [[ $r == PASS* ]]; then npass=$((npass + 1)); else nfail=$((nfail + 1)); fi
done
echo "$npass passed, $nfail failed"
[[ $nfail -eq 0 ]]
