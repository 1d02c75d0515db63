#!/usr/bin/env bash
# pktgen-vms.sh: drive the kernel's pktgen (CONFIG_NET_PKTGEN) at VM MAC
# addresses behind a vmq host, with the flags of the kernel's
# samples/pktgen scripts. Each thread gets one pktgen device per VM MAC
# (DEV@N), so the thread rotates over the VMs burst by burst.
#
#   pktgen-vms.sh -i eth0 -m 02:00:00:00:00:0a,02:00:00:00:00:0b -d 10.0.0.2 -t 2 -n 1000000
#   pktgen-vms.sh --dry-run -i eth0 -m 02:00:00:00:00:0a      # print the /proc writes only
set -euo pipefail

PGDIR=/proc/net/pktgen

usage() {
	cat <<USAGE
Usage: $0 -i DEV -m MAC[,MAC...] [options]
  -i DEV        interface to send on (required)
  -m MAC[,...]  destination MAC(s): the VMs; each thread rotates over them (required)
  -d DST_IP     destination IPv4 (default 198.18.0.42)
  -s SIZE       pkt_size given to pktgen (default 60)
  -t THREADS    pktgen threads = CPUs used, from -f (default 1)
  -f CPU        first CPU / kpktgend thread (default 0)
  -b BURST      frames per xmit burst (default 32)
  -n COUNT      frames per VM per thread, 0 = until Ctrl-C (default 100000)
  -v VLAN       802.1Q VLAN id (default none)
  -q SVLAN      outer 802.1ad VLAN id for QinQ, needs -v (default none)
  -p PORTS      UDP source port range MIN-MAX, randomised to spread RSS (default 9)
  -x, --dry-run print the writes to $PGDIR instead of doing them
  -h            this help
USAGE
}

DEV="" MACS="" DST_IP=198.18.0.42 SIZE=60 THREADS=1 FIRST=0 BURST=32 COUNT=100000
VLAN="" SVLAN="" PORTS=9 DRY=0

args=()
for a in "$@"; do
	if [[ $a == --dry-run ]]; then DRY=1; else args+=("$a"); fi
done
set -- "${args[@]+"${args[@]}"}"
while getopts "i:m:d:s:t:f:b:n:v:q:p:xh" opt; do
	case $opt in
	i) DEV=$OPTARG ;;
	m) MACS=$OPTARG ;;
	d) DST_IP=$OPTARG ;;
	s) SIZE=$OPTARG ;;
	t) THREADS=$OPTARG ;;
	f) FIRST=$OPTARG ;;
	b) BURST=$OPTARG ;;
	n) COUNT=$OPTARG ;;
	v) VLAN=$OPTARG ;;
	q) SVLAN=$OPTARG ;;
	p) PORTS=$OPTARG ;;
	x) DRY=1 ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))

die() { echo "$0: $*" >&2; exit 2; }

[[ $# -eq 0 ]] || die "unexpected arguments: $*"
[[ -n $DEV ]] || die "-i DEV is required"
[[ -n $MACS ]] || die "-m MAC is required"
[[ $DEV =~ ^[A-Za-z0-9_.:-]{1,15}$ ]] || die "bad interface name '$DEV'"
for n in SIZE THREADS FIRST BURST COUNT; do
	[[ ${!n} =~ ^[0-9]+$ ]] || die "-$n must be a number, got '${!n}'"
done
((SIZE >= 60 && SIZE <= 9000)) || die "-s $SIZE out of 60..9000"
((THREADS >= 1)) || die "-t must be at least 1"
((BURST >= 1)) || die "-b must be at least 1"
[[ $DST_IP =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "bad IPv4 address '$DST_IP'"
if [[ -n $VLAN ]]; then
	if [[ ! $VLAN =~ ^[0-9]+$ ]] || ((VLAN < 1 || VLAN > 4094)); then die "-v $VLAN out of 1..4094"; fi
fi
if [[ -n $SVLAN ]]; then
	[[ -n $VLAN ]] || die "-q (QinQ) needs -v"
	if [[ ! $SVLAN =~ ^[0-9]+$ ]] || ((SVLAN < 1 || SVLAN > 4094)); then die "-q $SVLAN out of 1..4094"; fi
fi
if [[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]]; then
	PORT_MIN=${BASH_REMATCH[1]} PORT_MAX=${BASH_REMATCH[2]}
elif [[ $PORTS =~ ^[0-9]+$ ]]; then
	PORT_MIN=$PORTS PORT_MAX=$PORTS
else
	die "-p $PORTS: want PORT or MIN-MAX"
fi
((PORT_MIN <= PORT_MAX && PORT_MAX <= 65535)) || die "-p $PORTS out of range"
IFS=, read -r -a MAC_LIST <<<"$MACS"
for m in "${MAC_LIST[@]}"; do
	[[ $m =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ ]] || die "bad MAC '$m'"
done

# pgset FILE CMD: one write to a pktgen control file, checked like the
# kernel's samples do (the file reports "Result: OK" after a good command).
pgset() {
	local file=$1 cmd=$2
	if ((DRY)); then
		echo "echo \"$cmd\" > $file"
		return
	fi
	echo "$cmd" >"$file"
	if [[ $file != "$PGDIR/pgctrl" ]] && ! grep -q "Result: OK:" "$file"; then
		echo "$0: '$cmd' > $file failed:" >&2
		grep "Result:" "$file" >&2 || true
		exit 1
	fi
}

if ((!DRY)); then
	[[ $EUID -eq 0 ]] || die "needs root"
	[[ -d /sys/class/net/$DEV ]] || die "no interface $DEV"
	if [[ ! -d $PGDIR ]]; then
		modprobe pktgen || die "no pktgen: this kernel lacks CONFIG_NET_PKTGEN (try vmq-pktgen instead)"
	fi
fi

# Reset every thread first: a stale device would keep sending.
pgset "$PGDIR/pgctrl" "reset"

devs=()
for ((t = 0; t < THREADS; t++)); do
	cpu=$((FIRST + t))
	thread="$PGDIR/kpktgend_$cpu"
	pgset "$thread" "rem_device_all"
	for ((k = 0; k < ${#MAC_LIST[@]}; k++)); do
		pgdev="$DEV@$((t * ${#MAC_LIST[@]} + k))"
		devs+=("$pgdev")
		pgset "$thread" "add_device $pgdev"
		f="$PGDIR/$pgdev"
		pgset "$f" "flag QUEUE_MAP_CPU"
		pgset "$f" "count $COUNT"
		pgset "$f" "clone_skb 0"
		pgset "$f" "pkt_size $SIZE"
		pgset "$f" "burst $BURST"
		pgset "$f" "delay 0"
		pgset "$f" "dst $DST_IP"
		pgset "$f" "dst_mac ${MAC_LIST[k]}"
		if [[ -n $VLAN ]]; then
			pgset "$f" "vlan_id $VLAN"
			pgset "$f" "vlan_p 0"
			pgset "$f" "vlan_cfi 0"
		fi
		if [[ -n $SVLAN ]]; then
			pgset "$f" "svlan_id $SVLAN"
			pgset "$f" "svlan_p 0"
			pgset "$f" "svlan_cfi 0"
		fi
		pgset "$f" "udp_src_min $PORT_MIN"
		pgset "$f" "udp_src_max $PORT_MAX"
		if ((PORT_MIN != PORT_MAX)); then
			pgset "$f" "flag UDPSRC_RND"
		fi
	done
done

if ((DRY)); then
	pgset "$PGDIR/pgctrl" "start"
	exit 0
fi

# Ctrl-C stops the threads; results are printed either way.
trap 'echo stop > "$PGDIR/pgctrl"' INT TERM
echo "Running: ${#devs[@]} pktgen devices on $DEV (Ctrl-C to stop)" >&2
pgset "$PGDIR/pgctrl" "start" || true
trap - INT TERM
for d in "${devs[@]}"; do
	echo "== $d"
	grep -A2 "Result:" "$PGDIR/$d" || true
done
