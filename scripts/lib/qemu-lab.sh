# shellcheck shell=bash
# Helpers shared by the QEMU labs: scripts/lab (isboot), scripts/lab-reference (the reference
# stack: dnsmasq + tgt), scripts/boot-compare (both, timed) and scripts/demo. Source it after
# setting PROG; the functions use these globals of the caller:
#   NS, BR          the lab's network namespace and its bridge (created by lab_netns)
#   work            the run's directory (serial logs, sockets, UEFI variable stores)
#   timeout         seconds a boot may take to reach the marker (boot_to_marker)
#   steps, results  the steps asked for (has) and the PASS/FAIL lines (pass, fail)
#   SERVER_LOGS     server logs whose tails go with a failed boot's serial tail
# and set QPID[NAME] (declare -A QPID before booting) and PIDS (every process started).
# Nothing here touches the machine's real interfaces: everything runs in $NS.
# shellcheck disable=SC2154 # work, timeout, steps, MAC, IPADDR, CTL: set by the caller

declare -A QPID=()
PIDS=()
SERVER_LOGS=()

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { printf '[%s %4ds] %s\n' "$PROG" "$SECONDS" "$*"; }
nsx() { ip netns exec "$NS" "$@"; }
# For background jobs: exec, so that $! is the PID of the program itself.
nsx_exec() { exec ip netns exec "$NS" "$@"; }

lab_need() { # TOOL... : die naming the apt packages when one is missing
    local t
    for t in "$@"; do
        command -v "$t" > /dev/null || die "missing tool '$t' (apt-get install -y iproute2 qemu-system-x86 e2fsprogs tgt dnsmasq-base)"
    done
}

# OVMF firmware (UEFI clients).
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
lab_need_ovmf() { [[ -f $OVMF_CODE ]] || die "no OVMF firmware (apt-get install -y ovmf)"; }

# QEMU acceleration: KVM where it can run firmware, TCG elsewhere (/dev/kvm of kvm_pvm cannot).
accel=(-accel tcg -cpu max)
if [[ -e /dev/kvm && ! -e /sys/module/kvm_pvm ]]; then accel=(-accel kvm -cpu host); fi

lab_tap() { # NAME: tap-NAME on the bridge (once)
    nsx ip link show "tap-$1" > /dev/null 2>&1 && return 0
    nsx ip tuntap add dev "tap-$1" mode tap
    nsx ip link set "tap-$1" master "$BR" up
}

lab_netns() { # SERVER_IP [--ipv6] CLIENT...: namespace $NS, bridge $BR with SERVER_IP/24, taps
    local server=$1 c
    shift
    ip netns add "$NS"
    nsx ip link set lo up
    nsx ip link add "$BR" type bridge
    nsx ip addr add "$server/24" dev "$BR"
    if [[ ${1:-} == --ipv6 ]]; then
        nsx ip addr add fd77::1/64 dev "$BR" nodad
        shift
    fi
    nsx ip link set "$BR" up
    for c in "$@"; do lab_tap "$c"; done
}

lab_free_tgt_ctl() { # print the first tgtd control port in 9..60 nobody answers on
    local p
    for p in $(seq 9 60); do
        if ! tgtadm -C "$p" --mode system --op show > /dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# lab_qemu NAME MODE MAC SERIAL [NIC]: boot a diskless client from the network on tap-NAME.
# MODE: bios (SeaBIOS + the NIC's iPXE ROM), uefi (OVMF + the NIC's iPXE EFI ROM) or uefi-pxe
# (OVMF's own PXE, the NIC ROM off). NIC: the QEMU NIC model (default virtio-net-pci). Serial
# console logged to SERIAL and typed into through $work/NAME.sock (send); monitor on
# $work/NAME.mon; UEFI variables in $work/NAME.vars.fd (kept across boots; remove it for a
# fresh one). Sets QPID[NAME] and adds the PID to PIDS. LAB_VGA (default none) is QEMU's -vga
# model: an EFI program that needs a GOP framebuffer (memtest86+'s EFI loader) wants std.
lab_qemu() {
    local c=$1 mode=$2 mac=$3 serial=$4 nic=${5:-virtio-net-pci} fw=() rom=()
    if [[ $mode == uefi-pxe ]]; then rom=(romfile=); fi
    if [[ $mode == uefi* ]]; then
        [[ -f $work/$c.vars.fd ]] || cp "$OVMF_VARS" "$work/$c.vars.fd"
        fw=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$work/$c.vars.fd")
    fi
    : > "$serial"
    nsx_exec qemu-system-x86_64 -name "$PROG-$c" "${accel[@]}" -m 1024 -smp 1 "${fw[@]}" \
        -vga "${LAB_VGA:-none}" -display none -no-user-config -nodefaults \
        -chardev "socket,id=ser0,path=$work/$c.sock,server=on,wait=off,logfile=$serial" -serial chardev:ser0 \
        -monitor "unix:$work/$c.mon,server,nowait" \
        -netdev "tap,id=net0,ifname=tap-$c,script=no,downscript=no" \
        -device "$nic,netdev=net0,mac=$mac${rom:+,${rom[0]}}" -boot n \
        > "${serial%.serial}.qemu.log" 2>&1 &
    QPID[$c]=$!
    PIDS+=($!)
}

# The serial log without CRs and terminal escapes (bash's bracketed-paste toggles precede
# command output on the same line).
clean() { tr -d '\r' < "$1" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'; }

tail_serial() { # NAME FILE: the last 40 lines of a client's console and of the server logs
    local l
    echo "---- last 40 serial lines of $1 ----"
    clean "$2" | tail -n 40
    for l in "${SERVER_LOGS[@]}"; do
        [[ -f $l ]] || continue
        echo "---- last 40 lines of ${l##*/} ----"
        clean "$l" | tail -n 40
    done
    echo "----"
}

wait_for() { # NAME RUN REGEX TIMEOUT: wait for REGEX on $work/NAME.RUN.serial
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
    /usr/bin/python3 - "$work/$1.sock" "$2" << 'PYEOF'
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

wait_exit() { # NAME TIMEOUT: wait for the client's QEMU to exit
    local start=$SECONDS
    while kill -0 "${QPID[$1]}" 2> /dev/null; do
        ((SECONDS - start < $2)) || return 1
        sleep 2
    done
}

boot_to_marker() { # NAME MODE RUN: wait for the image's marker line, log it
    local c=$1 run=$3
    if ! wait_for "$c" "$run" '^ISBOOT-MARKER' "$timeout"; then
        tail_serial "$c" "$work/$c.$run.serial"
        return 1
    fi
    local m
    m=$(marker "$c" "$run")
    log "$c run $run ($2): marker after $((SECONDS - $(cat "$work/$c.$run.start"))) s: $m"
}

fsck_clone() { # NAME: e2fsck -fn the root partition of $work/NAME.raw
    local loop rc=0
    loop=$(losetup --find --show --read-only "$work/$1.raw")
    partx -a "$loop" 2> /dev/null || true
    e2fsck -fn "${loop}p3" > "$work/$1.fsck" 2>&1 || rc=$?
    partx -d "$loop" 2> /dev/null || true
    losetup -d "$loop"
    tail -n 1 "$work/$1.fsck"
    return "$rc"
}

pass() { results+=("PASS $*"); log "PASS $*"; }
fail() { results+=("FAIL $*"); log "FAIL $*"; }
has() { local s; for s in "${steps[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

# The reference stack (what labs use without isboot): tgtd on control port $CTL with a portal
# on SERVER:3260, one target IQN_PREFIX:NAME per client with LUN 1 = $work/NAME.raw (the
# caller makes those files), and dnsmasq for DHCP (fixed address, host name, root-path, no boot
# file), iPXE's no-pxedhcp (175.176) and IPv6 RAs. Uses the MAC and IPADDR arrays.
reference_start() { # SERVER IQN_PREFIX LEASEFILE CLIENT...
    local server=$1 prefix=$2 leases=$3 c tid=0
    shift 3
    nsx_exec tgtd -f -C "$CTL" --iscsi "portal=$server:3260" >> "$work/tgtd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do tgtadm -C "$CTL" --lld iscsi --mode target --op show > /dev/null 2>&1 && break; sleep 0.2; done
    kill -0 "${PIDS[-1]}" 2> /dev/null || die "tgtd did not start: $(cat "$work/tgtd.log")"
    for c in "$@"; do
        tid=$((tid + 1))
        tgtadm -C "$CTL" --lld iscsi --mode target --op new --tid "$tid" --targetname "$prefix:$c"
        tgtadm -C "$CTL" --lld iscsi --mode logicalunit --op new --tid "$tid" --lun 1 --backing-store "$work/$c.raw"
        tgtadm -C "$CTL" --lld iscsi --mode target --op bind --tid "$tid" --initiator-address ALL
    done
    # shellcheck disable=SC2054 # commas belong to dnsmasq option values
    local dargs=(--keep-in-foreground --no-resolv --no-hosts --port=0 --interface="$BR" --bind-interfaces
        --dhcp-authoritative --dhcp-leasefile="$leases" --log-dhcp
        --dhcp-range="10.77.0.100,10.77.0.200,255.255.255.0,12h" --dhcp-range=::,constructor:"$BR",ra-only
        --enable-ra --dhcp-option=encap:175,176,1)
    for c in "$@"; do
        dargs+=(--dhcp-host="${MAC[$c]},set:$c,${IPADDR[$c]},$c"
            --dhcp-option="tag:$c,option:root-path,iscsi:$server::3260:1:$prefix:$c")
    done
    nsx_exec dnsmasq "${dargs[@]}" >> "$work/dnsmasq.log" 2>&1 &
    PIDS+=($!)
}

reference_stop_tgtd() { # tgtd ignores SIGTERM while it has targets: ask it to exit first
    tgtadm -C "$CTL" --op delete --mode system > /dev/null 2>&1 || true
}
