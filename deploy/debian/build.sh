#!/usr/bin/env bash
# Builds the Debian packages cofre-controller, cofre-agent, cofre-store and cofre (the CLI) from
# binaries cargo already built, with dpkg-deb alone (no debian/ source tree, no cargo tool):
#
#   cargo build --release --locked --bins && deploy/debian/build.sh
#
#   deploy/debian/build.sh [--profile release|debug] [--bin-dir DIR] [--out DIR]
#                          [--version VERSION] [--compress xz|gzip|zstd|none]
#
# Reads the binaries from --bin-dir (default $CARGO_TARGET_DIR/<profile>/, i.e.
# target/release/), writes <name>_<version>_<arch>.deb into --out (default
# $CARGO_TARGET_DIR/debian/) and prints their paths, one a line. The version defaults to the
# workspace's, as <version>-1; xz is dpkg-deb's default compression. What each package holds, what
# its maintainer scripts do and remove vs purge: docs/install.md, "Debian packages". The units
# are deploy/systemd's with /usr/local/bin replaced by /usr/bin, plus the drop-ins in
# deploy/debian/systemd/; the users are deploy/systemd/cofre.sysusers's lines; the maintainer
# scripts are the templates in deploy/debian/maintscripts/ filled in per package below.
# Binaries are stripped as dh_strip does; Depends comes from dpkg-shlibdeps (package dpkg-dev).
set -euo pipefail
umask 022

die() {
	printf 'deploy/debian/build.sh: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
}

profile=release
bindir=
out=
version=
compress=xz
while [ $# -gt 0 ]; do
	case "$1" in
		--profile) profile=${2:?--profile needs a value}; shift 2 ;;
		--bin-dir) bindir=${2:?--bin-dir needs a directory}; shift 2 ;;
		--out) out=${2:?--out needs a directory}; shift 2 ;;
		--version) version=${2:?--version needs a value}; shift 2 ;;
		--compress) compress=${2:?--compress needs xz, gzip, zstd or none}; shift 2 ;;
		-h | --help) usage ;;
		*) printf 'unknown argument: %s\n' "$1" >&2; usage ;;
	esac
done
case "$profile" in release | debug) ;; *) die "--profile must be release or debug, not $profile" ;; esac
case "$compress" in xz | gzip | zstd | none) ;; *) die "--compress must be xz, gzip, zstd or none" ;; esac

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/deploy/debian
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
bindir=${bindir:-$target/$profile}
out=${out:-$target/debian}
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install dpkg-dev binutils)"
done
for bin in cofre-controller cofre-agent cofre-store cofre; do
	[ -x "$bindir/$bin" ] || die "$bindir/$bin not found: build it first (cargo build --locked --bins$([ "$profile" = release ] && echo ' --release'))"
done
if [ -z "$version" ]; then
	upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
	[ -n "$upstream" ] || die "no version in [workspace.package] of $root/Cargo.toml"
	version=$upstream-1
fi
arch=$(dpkg --print-architecture)
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants to run beside a debian/control.
mkdir -p "$work/debian"
printf 'Source: cofre\n\nPackage: cofre\nArchitecture: any\n' >"$work/debian/control"

maintainer='Cofre maintainers <maintainers@users.noreply.r-seed-cde8a3d8.example>'
homepage=$(sed -n 's/^repository *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)

year=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y)

# stage PACKAGE: an empty package tree with the binary, stripped, and the documentation files.
stage() {
	local pkg=$1 dir=$work/debian/$1
	install -d "$dir/DEBIAN" "$dir/usr/bin" "$dir/usr/share/doc/$pkg"
	strip --remove-section=.comment --remove-section=.note -o "$dir/usr/bin/$pkg" "$bindir/$pkg"
	chmod 0755 "$dir/usr/bin/$pkg"
	cat >"$dir/usr/share/doc/$pkg/copyright" <<-EOF
		Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
		Upstream-Name: cofre
		Source: $homepage

		Files: *
		Copyright: $year The Cofre contributors
		License: AGPL-3.0-or-later
		 This program is free software: you can redistribute it and/or modify it under the
		 terms of the GNU Affero General Public License as published by the Free Software
		 Foundation, either version 3 of the License, or (at your option) any later version.
		 The full text: https://www.gnu.org/licenses/agpl-3.0.txt
	EOF
	printf '%s (%s) unstable; urgency=medium\n\n  * Built from the Cofre workspace by deploy/debian/build.sh.\n\n -- %s  %s\n' \
		"$pkg" "$version" "$maintainer" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" \
		| gzip -9n >"$dir/usr/share/doc/$pkg/changelog.Debian.gz"
}

# unit PACKAGE UNIT: deploy/systemd/UNIT with the binaries in /usr/bin, and its package drop-in.
unit() {
	local dir=$work/debian/$1 name=$2
	install -d "$dir/lib/systemd/system"
	sed 's#/usr/local/bin/#/usr/bin/#g' "$root/deploy/systemd/$name" >"$dir/lib/systemd/system/$name"
	if grep -n '/usr/local' "$dir/lib/systemd/system/$name" >&2; then
		die "$name still names /usr/local after the path change"
	fi
	if [ -d "$here/systemd/$name.d" ]; then
		install -d "$dir/lib/systemd/system/$name.d"
		install -m 0644 "$here/systemd/$name.d/"*.conf "$dir/lib/systemd/system/$name.d/"
	fi
}

# sysusers PACKAGE USER: the user's line of deploy/systemd/cofre.sysusers.
sysusers() {
	local dir=$work/debian/$1 user=$2
	install -d "$dir/usr/lib/sysusers.d"
	{
		printf '# The %s service user (from deploy/systemd/cofre.sysusers).\n' "$user"
		grep -E "^u[[:space:]]+$user[[:space:]]" "$root/deploy/systemd/cofre.sysusers" \
			|| die "no line for $user in deploy/systemd/cofre.sysusers"
	} >"$dir/usr/lib/sysusers.d/$1.conf"
}

# tmpfiles PACKAGE MODE:OWNER:PATH...: directories systemd-tmpfiles (or postinst) creates.
tmpfiles() {
	local pkg=$1 dir=$work/debian/$1 entry
	shift
	install -d "$dir/usr/lib/tmpfiles.d"
	{
		printf '# Directories of %s; `dpkg --purge %s` removes them (docs/install.md).\n' "$pkg" "$pkg"
		for entry in "$@"; do
			IFS=: read -r mode owner path <<<"$entry"
			printf 'd %s %s %s %s -\n' "$path" "$mode" "$owner" "$owner"
		done
	} >"$dir/usr/lib/tmpfiles.d/$pkg.conf"
}

# conffile PACKAGE SOURCE DEST MODE: a file under /etc, listed in DEBIAN/conffiles.
conffile() {
	local dir=$work/debian/$1
	install -D -m "$4" "$2" "$dir$3"
	printf '%s\n' "$3" >>"$dir/DEBIAN/conffiles"
}

# script PACKAGE NAME KEY=VALUE...: a maintainer script from its template.
script() {
	local pkg=$1 name=$2 file=$work/debian/$1/DEBIAN/$2 kv key value
	shift 2
	cp "$here/maintscripts/$name" "$file"
	for kv in PACKAGE="$pkg" "$@"; do
		key=${kv%%=*}
		value=${kv#*=}
		case "$value" in *"'"*) die "$pkg/$name: $key must not contain a single quote" ;; esac
		value=${value//\\/\\\\}
		value=${value//&/\\&}
		value=${value//|/\\|}
		sed -i "s|#$key#|$value|g" "$file"
	done
	if grep -n '#[A-Z_]\+#' "$file" >&2; then
		die "$pkg/$name: placeholders left unfilled"
	fi
	chmod 0755 "$file"
}

# overrides PACKAGE TAG...: lintian tags this package earns on purpose (the comment says why).
overrides() {
	local pkg=$1 dir=$work/debian/$1 tag
	shift
	install -d "$dir/usr/share/lintian/overrides"
	{
		printf '# Built outside the Debian archive (no bug to close); config files that hold\n'
		printf '# passwords are not world-readable (postinst gives the service user its group).\n'
		printf '%s: initial-upload-closes-no-bugs\n' "$pkg"
		for tag in "$@"; do printf '%s: %s\n' "$pkg" "$tag"; done
	} >"$dir/usr/share/lintian/overrides/$pkg"
}

# finish PACKAGE DESCRIPTION [FIELD: VALUE]...: control, md5sums, then the .deb. Packages
# with maintainer scripts also depend on adduser (their fallback without systemd-sysusers).
finish() {
	local pkg=$1 description=$2 dir=$work/debian/$1 depends size deb
	shift 2
	depends=$(cd "$work" && dpkg-shlibdeps -O "debian/$pkg/usr/bin/$pkg" 2>/dev/null \
		| sed -n 's/^shlibs:Depends=//p')
	[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies for $pkg"
	if [ -f "$dir/DEBIAN/postinst" ]; then
		depends="$depends, adduser"
	fi
	size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
	{
		printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: %s\n' \
			"$pkg" "$version" "$arch" "$maintainer"
		printf 'Installed-Size: %s\nDepends: %s\n' "$size" "$depends"
		for field in "$@"; do printf '%s\n' "$field"; done
		printf 'Section: admin\nPriority: optional\nHomepage: %s\n' "$homepage"
		printf 'Description: %s\n' "$description"
		cat
	} >"$dir/DEBIAN/control"
	(
		cd "$dir"
		find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\./##' | LC_ALL=C sort \
			| grep -vxF -f <(sed 's#^/##' DEBIAN/conffiles 2>/dev/null || true) \
			| xargs -r md5sum >DEBIAN/md5sums
	)
	deb=$out/${pkg}_${version}_${arch}.deb
	dpkg-deb --root-owner-group -Z"$compress" --build "$dir" "$deb" >/dev/null
	printf '%s\n' "$deb"
}

etc=$root/deploy/systemd/etc/cofre

# ---- cofre-controller
pkg=cofre-controller
stage $pkg
unit $pkg cofre-controller.service
unit $pkg cofre-controller-migrate.service
sysusers $pkg cofre-controller
tmpfiles $pkg 0700:cofre-controller:/var/lib/cofre-controller 0700:cofre-controller:/var/cache/cofre-controller
conffile $pkg "$etc/controller.toml" /etc/cofre/controller.toml 0640
conffile $pkg "$etc/controller.env" /etc/cofre/controller.env 0640
conffile $pkg "$etc/controller-migrate.env" /etc/cofre/controller-migrate.env 0600
common=(USER=cofre-controller "GECOS=Cofre controller" UNITS=cofre-controller.service
	"GROUP_READABLE=/etc/cofre/controller.toml /etc/cofre/controller.env")
script $pkg postinst "${common[@]}" \
	"DIRS=0700:cofre-controller:/var/lib/cofre-controller 0700:cofre-controller:/var/cache/cofre-controller" \
	CONFIGURED=/etc/cofre/master.key \
	"NOTE=enabled; it starts once configured: set the database URLs in /etc/cofre/controller.env and controller-migrate.env and grpc.public_url in controller.toml, run \"cofre-controller generate-master-key /etc/cofre/master.key\" (back it up), then \"systemctl start cofre-controller\" (docs/install.md)"
script $pkg prerm "ALL_UNITS=cofre-controller.service cofre-controller-migrate.service"
script $pkg postrm "${common[@]}" \
	"PURGE_DIRS=/var/lib/cofre-controller /var/cache/cofre-controller" KEEP=
overrides $pkg 'non-standard-file-perm 0640 != 0644 [etc/cofre/controller.toml]' \
	'non-standard-file-perm 0640 != 0644 [etc/cofre/controller.env]' \
	'non-standard-file-perm 0600 != 0644 [etc/cofre/controller-migrate.env]'
finish $pkg "fleet manager for restic backups: the Cofre controller" \
	'Recommends: postgresql (>= 15)' 'Suggests: cofre, cofre-agent' <<'EOF'
 The controller of Cofre: REST API, gRPC service for agents and stores,
 private CA, policies, hash-chained audit log and compliance, with its
 state in PostgreSQL. Installs cofre-controller.service and
 cofre-controller-migrate.service (enabled; they start once
 /etc/cofre/master.key exists), the cofre-controller system user, and
 controller.toml, controller.env and controller-migrate.env in /etc/cofre
 as conffiles.
 .
 The cofre-agent binary, installed on the same host, is what the
 controller serves to the one-line agent install.
EOF

# ---- cofre-agent
pkg=cofre-agent
stage $pkg
unit $pkg cofre-agent.service
sysusers $pkg cofre-agent
tmpfiles $pkg 0700:cofre-agent:/var/lib/cofre-agent
install -d "$work/debian/$pkg/etc/cofre-agent/hooks"
conffile $pkg "$etc/agent.env" /etc/cofre/agent.env 0644
common=(USER=cofre-agent "GECOS=Cofre agent" UNITS=cofre-agent.service GROUP_READABLE=)
script $pkg postinst "${common[@]}" DIRS=0700:cofre-agent:/var/lib/cofre-agent \
	CONFIGURED=/var/lib/cofre-agent/identity.json \
	"NOTE=enabled; it starts once enrolled: \"cofre-agent enroll --controller URL --token cofre1...\" then \"systemctl start cofre-agent\" (docs/install.md)"
script $pkg prerm ALL_UNITS=cofre-agent.service
script $pkg postrm "${common[@]}" PURGE_DIRS=/var/lib/cofre-agent KEEP=
overrides $pkg
finish $pkg "restic backups of this machine, managed by a Cofre controller" <<'EOF'
 The Cofre agent enrolls once with a token, keeps its plan on disk and
 runs backups on the schedule its controller pushes, also while the
 controller is unreachable. Installs cofre-agent.service (enabled; it
 starts once the machine is enrolled), the cofre-agent system user (which
 reads every file through CAP_DAC_READ_SEARCH only), /etc/cofre/agent.env
 as a conffile and the hook directory /etc/cofre-agent/hooks.
EOF

# ---- cofre-store
pkg=cofre-store
stage $pkg
unit $pkg cofre-store.service
sysusers $pkg cofre-store
tmpfiles $pkg 0700:cofre-store:/var/lib/cofre-store
conffile $pkg "$here/store.toml" /etc/cofre/store.toml 0640
conffile $pkg "$etc/store.env" /etc/cofre/store.env 0640
common=(USER=cofre-store "GECOS=Cofre store" UNITS=cofre-store.service
	"GROUP_READABLE=/etc/cofre/store.toml /etc/cofre/store.env")
script $pkg postinst "${common[@]}" DIRS=0700:cofre-store:/var/lib/cofre-store \
	CONFIGURED=/var/lib/cofre-store/state/store.json \
	"NOTE=enabled; it starts once enrolled: \"runuser -u cofre-store -- cofre-store --config /etc/cofre/store.toml enroll --controller URL --token cofre1...\" then \"systemctl start cofre-store\" (docs/install.md, docs/store.md)"
script $pkg prerm ALL_UNITS=cofre-store.service
script $pkg postrm "${common[@]}" PURGE_DIRS=/var/lib/cofre-store KEEP=/var/lib/cofre-store/data
overrides $pkg 'non-standard-file-perm 0640 != 0644 [etc/cofre/store.toml]' \
	'non-standard-file-perm 0640 != 0644 [etc/cofre/store.env]'
finish $pkg "identity-aware restic REST server for Cofre" <<'EOF'
 cofre-store is a restic REST server on rest-server's on-disk layout that
 knows who is calling: each machine reaches only its own repositories,
 append-only, within its quota. Installs cofre-store.service (enabled; it
 starts once the store is enrolled), the cofre-store system user, and
 store.toml and store.env in /etc/cofre as conffiles. Purging the package
 never removes the repositories in /var/lib/cofre-store/data.
EOF

# ---- cofre (the CLI)
pkg=cofre
stage $pkg
overrides $pkg
finish $pkg "command-line client of the Cofre backup fleet manager" \
	'Suggests: cofre-controller' <<'EOF'
 The cofre command: every resource of a Cofre controller's REST API
 (machines, policies, repositories, jobs, users, audit, compliance) and
 `cofre apply` of a fleet file; prints JSON, tables or CSV.
EOF
