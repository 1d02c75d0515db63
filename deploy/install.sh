#!/usr/bin/env bash
# Installs or uninstalls vmq. `make install` / `make uninstall` run it.
#
#   deploy/install.sh install      copy binaries, unit, configs, monitoring assets
#   deploy/install.sh uninstall    remove exactly what install recorded
#
# Environment (defaults in brackets):
#   DESTDIR     staging root for packaging []
#   PREFIX      [/usr/local]; binaries go to $PREFIX/bin
#   SYSCONFDIR  [/etc]; configs go to $SYSCONFDIR/vmq
#   UNITDIR     [$PREFIX/lib/systemd/system] (systemd searches /usr/local/lib/systemd/system too)
#   SRCBIN      where the built binaries are [<repo>/bin, from make build]
#   CNIBINDIR   where the container runtime looks for CNI plugins; vmq-cni
#               goes there [/opt/cni/bin]
#
# stdout is the list of installed (or removed) files, one per line, with
# DESTDIR; notes go to stderr. The list, with checksums, is kept in
# $PREFIX/share/vmq/install-manifest for uninstall. Configs in
# $SYSCONFDIR/vmq are never overwritten or removed once an admin edited them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SRCBIN=${SRCBIN:-$root/bin}
CNIBINDIR=${CNIBINDIR:-/opt/cni/bin}

CMDS=(vmqd vmqctl vmq-pktgen vmq-guest)
SHAREDIR=$PREFIX/share/vmq
CONFDIR=$SYSCONFDIR/vmq
MANIFEST=$SHAREDIR/install-manifest

die() {
	echo "install.sh: $*" >&2
	exit 1
}

# Paths end up in sed expressions and in the unit file: keep them plain.
for v in PREFIX SYSCONFDIR UNITDIR CNIBINDIR; do
	[[ ${!v} =~ ^/[A-Za-z0-9._/+-]*$ ]] || die "$v must be an absolute path of [A-Za-z0-9._/+-], got '${!v}'"
done
[[ -z $DESTDIR || $DESTDIR == /* ]] || die "DESTDIR must be absolute, got '$DESTDIR'"

manifest_lines=()

# put MODE SRC DST KIND: install SRC as $DESTDIR$DST and record it.
put() {
	local mode=$1 src=$2 dst=$3 kind=$4
	install -D -m "$mode" "$src" "$DESTDIR$dst"
	local sum
	sum=$(sha256sum "$DESTDIR$dst" | cut -d' ' -f1)
	manifest_lines+=("$kind $sum $dst")
	echo "$DESTDIR$dst"
}

# sum_in_manifest PATH: the checksum an earlier install recorded for PATH.
sum_in_manifest() {
	[[ -f $DESTDIR$MANIFEST ]] || return 0
	awk -v p="$1" '$3 == p { print $2 }' "$DESTDIR$MANIFEST"
}

do_install() {
	local c
	for c in "${CMDS[@]}" vmq-cni; do
		[[ -x $SRCBIN/$c ]] || die "missing $SRCBIN/$c: run make build first"
	done
	for c in "${CMDS[@]}"; do
		put 0755 "$SRCBIN/$c" "$PREFIX/bin/$c" file
	done
	# The runtime finds CNI plugins by name in its plugin directory only.
	put 0755 "$SRCBIN/vmq-cni" "$CNIBINDIR/vmq-cni" file

	# The unit names /usr/local/bin/vmqd and /etc/vmq/vmqd.yaml.
	tmp=$(mktemp)
	trap 'rm -f "$tmp"' EXIT
	sed -e "s|/usr/local/bin/|$PREFIX/bin/|g" -e "s|/etc/vmq/|$CONFDIR/|g" \
		"$here/systemd/vmqd.service" >"$tmp"
	put 0644 "$tmp" "$UNITDIR/vmqd.service" file

	put 0644 "$here/config/vmqd.yaml" "$CONFDIR/vmqd.example.yaml" file
	# vmqd.yaml is the admin's: install it only where there is none, or
	# where it is still exactly what an earlier install put there.
	local conf=$CONFDIR/vmqd.yaml
	if [[ -e $DESTDIR$conf ]]; then
		local was now
		was=$(sum_in_manifest "$conf")
		now=$(sha256sum "$DESTDIR$conf" | cut -d' ' -f1)
		if [[ -n $was && $was == "$now" ]]; then
			put 0644 "$here/config/vmqd.yaml" "$conf" conf
		else
			echo "install.sh: keeping existing $DESTDIR$conf (see vmqd.example.yaml)" >&2
		fi
	else
		put 0644 "$here/config/vmqd.yaml" "$conf" conf
	fi

	local ex
	for ex in one-nic multiqueue vlan-trunk; do
		put 0644 "$here/config/examples/$ex.yaml" "$SHAREDIR/examples/$ex.yaml" file
	done
	put 0644 "$here/prometheus/prometheus.yml" "$SHAREDIR/prometheus/prometheus.yml" file
	put 0644 "$here/prometheus/alerts.yml" "$SHAREDIR/prometheus/alerts.yml" file
	put 0644 "$here/grafana/vmq-dashboard.json" "$SHAREDIR/grafana/vmq-dashboard.json" file

	printf '%s\n' "${manifest_lines[@]}" >"$tmp"
	install -D -m 0644 "$tmp" "$DESTDIR$MANIFEST"
	echo "$DESTDIR$MANIFEST"

	if [[ -z $DESTDIR ]]; then
		echo "install.sh: run 'systemctl daemon-reload', edit $conf, then 'systemctl enable --now vmqd'" >&2
	fi
}

do_uninstall() {
	[[ -f $DESTDIR$MANIFEST ]] || die "no $DESTDIR$MANIFEST: nothing installed here (or PREFIX/DESTDIR differ from the install)"
	local kind sum path
	while read -r kind sum path; do
		[[ -n $path ]] || continue
		# The manifest is ours, but check anyway: only absolute paths, no '..'.
		[[ $path == /* && $path != *..* ]] || die "bad path '$path' in $DESTDIR$MANIFEST"
		if [[ ! -e $DESTDIR$path ]]; then
			echo "install.sh: $DESTDIR$path is already gone" >&2
			continue
		fi
		if [[ $kind == conf && $(sha256sum "$DESTDIR$path" | cut -d' ' -f1) != "$sum" ]]; then
			echo "install.sh: keeping $DESTDIR$path: edited since install" >&2
			continue
		fi
		rm -f "$DESTDIR$path"
		echo "$DESTDIR$path"
	done <"$DESTDIR$MANIFEST"
	rm -f "$DESTDIR$MANIFEST"
	echo "$DESTDIR$MANIFEST"
	# vmq's own directories go when empty; shared ones (bin, unit dir) stay.
	local d
	for d in "$SHAREDIR/examples" "$SHAREDIR/prometheus" "$SHAREDIR/grafana" "$SHAREDIR" "$CONFDIR"; do
		rmdir "$DESTDIR$d" 2>/dev/null || true
	done
}

case ${1:-} in
install) do_install ;;
uninstall) do_uninstall ;;
*) die "usage: $0 install|uninstall (DESTDIR, PREFIX, SYSCONFDIR, UNITDIR, CNIBINDIR, SRCBIN from the environment)" ;;
esac
