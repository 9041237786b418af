#!/bin/sh
# Cofre agent installer, served by the controller as GET /install.sh (docs/install.md). The
# controller prints the line that runs it (the portal's enrollment page, `cofre-controller up`):
# it checks this script's SHA-256 before running it, and pins the controller's TLS key.
#
#   … | sh -s -- --api https://CONTROLLER-API [--pin sha256//BASE64] \
#     --controller https://CONTROLLER:7443 --token cofre1.… --sha256 HEX
#
# Options: --prefix DIR (default /usr/local), --state-dir DIR (default /var/lib/cofre-agent),
# --no-systemd (install and enroll only), --uninstall [--purge] (remove the unit and the binary;
# the state dir, the machine's identity, only with --purge).
#
# Nothing the network could have altered is installed or run: the binary is downloaded to a
# temporary file beside its destination and its SHA-256 must equal --sha256 before it is moved
# into place (atomically); with --pin every download is made with curl --pinnedpubkey, so curl
# aborts before sending anything to a server without the controller's key; enrollment pins the
# controller's CA through the token. Running the script again upgrades the binary in place and
# keeps the identity (no new enrollment).
#
# Everything is inside functions and runs only from the last line, so a download cut short
# runs nothing.

set -eu

die() {
    printf 'cofre-install: error: %s\n' "$*" >&2
    exit 1
}

say() {
    printf 'cofre-install: %s\n' "$*" >&2
}

usage() {
    cat >&2 <<'COFRE_USAGE_END'
usage: sh install.sh --api URL [--pin sha256//BASE64] --controller URL --token cofre1.… --sha256 HEX
                     [--prefix DIR] [--state-dir DIR] [--no-systemd]
       sh install.sh --uninstall [--purge] [--prefix DIR] [--state-dir DIR] [--no-systemd]
COFRE_USAGE_END
    exit 2
}

# https://… always; plain http:// only to a loopback address (tests, a local controller).
check_api_url() {
    case "$1" in
        https://?*) ;;
        http://127.0.0.1:* | http://127.0.0.1/* | http://127.0.0.1 | http://localhost:* | http://localhost/* \
            | http://localhost | 'http://[::1]:'* | 'http://[::1]/'* | 'http://[::1]') ;;
        *) die "--api must be an https:// URL (plain http:// is accepted only for 127.0.0.1, localhost or [::1]): $1" ;;
    esac
}

# curl's pin of the REST API's key: sha256// and the base64 SHA-256 of its SubjectPublicKeyInfo,
# one only. Checked strictly: curl reads any other --pinnedpubkey value as a file name.
check_pin() {
    b64=${1#sha256//}
    [ "$b64" != "$1" ] || die "--pin must be sha256// followed by the key's base64 SHA-256 (the install line gives it): $1"
    case "$b64" in
        *[!A-Za-z0-9+/=]*) die "--pin must be sha256// followed by 44 base64 characters: $1" ;;
    esac
    [ "${#b64}" -eq 44 ] || die "--pin must be sha256// followed by 44 base64 characters: $1"
}

# Every download from the controller. With a pin, curl checks the server's key instead of its
# certificate chain (-k: the pin is stronger, and a private CA need not be trusted here) and
# aborts before sending anything when the key is another.
fetch() {
    if [ -n "$PIN" ]; then
        curl -fsS -k --proto '=https' --pinnedpubkey "$PIN" "$@"
    else
        curl -fsS --proto "$PROTO" "$@"
    fi
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    elif command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -r "$1" | cut -d' ' -f1
    else
        die "no sha256sum, shasum or openssl to check the download with"
    fi
}

platform() {
    os=$(uname -s | tr 'A-Z' 'a-z')
    arch=$(uname -m)
    case "$arch" in
        amd64) arch=x86_64 ;;
        arm64) arch=aarch64 ;;
    esac
    printf '%s-%s' "$os" "$arch"
}

write_unit() {
    unit_file=$1
    unit=$(cat <<'COFRE_UNIT_END'
@COFRE_AGENT_UNIT@
COFRE_UNIT_END
)
    case "$unit" in
        *@COFRE_AGENT_UNIT*) die "this copy of the script has no unit in it: use the one the controller serves, or --no-systemd" ;;
    esac
    tmp_unit="$unit_file.tmp.$$"
    printf '%s\n' "$unit" \
        | sed -e "s#/usr/local/bin/cofre-agent#$PREFIX/bin/cofre-agent#g" \
              -e "s#/var/lib/cofre-agent#$STATE_DIR#g" >"$tmp_unit"
    chmod 0644 "$tmp_unit"
    mv -f "$tmp_unit" "$unit_file"
}

ensure_user() {
    if ! id cofre-agent >/dev/null 2>&1; then
        say "creating the system user cofre-agent"
        useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
            --comment "Cofre agent" cofre-agent
    fi
}

uninstall() {
    if [ "$SYSTEMD" = yes ]; then
        if [ -f "$UNIT_FILE" ]; then
            systemctl disable --now cofre-agent >/dev/null 2>&1 || true
            rm -f "$UNIT_FILE"
            systemctl daemon-reload || true
        fi
    fi
    rm -f "$PREFIX/bin/cofre-agent"
    say "removed $PREFIX/bin/cofre-agent${UNIT_REMOVED_NOTE}"
    if [ "$PURGE" = yes ]; then
        rm -rf "$STATE_DIR"
        say "removed $STATE_DIR (this machine's identity is gone; revoke it on the controller)"
    else
        say "kept $STATE_DIR (this machine's identity): --uninstall --purge removes it"
    fi
}

install_agent() {
    [ -n "$API" ] || die "--api URL is required (the controller's REST API, where the binary is served)"
    check_api_url "$API"
    API=${API%/}
    case "$API" in
        https://*) PROTO='=https' ;;
        *) PROTO='=http' ;;
    esac
    if [ "$PIN_GIVEN" = yes ]; then
        # An empty --pin is refused too, never taken for "no pin".
        check_pin "$PIN"
        [ "$PROTO" = '=https' ] || die "--pin needs an https:// --api URL: $API"
    elif [ "$PROTO" = '=https' ]; then
        say "no --pin: the controller's certificate is checked against this machine's CAs only"
    fi
    [ -n "$SHA256" ] || die "--sha256 HEX is required: the agent's SHA-256, as the install line gives it"
    SHA256=$(printf '%s' "$SHA256" | tr 'A-F' 'a-f')
    case "$SHA256" in
        *[!0-9a-f]*) die "--sha256 must be 64 hexadecimal characters" ;;
    esac
    [ "${#SHA256}" -eq 64 ] || die "--sha256 must be 64 hexadecimal characters"
    enrolled=no
    [ -f "$STATE_DIR/identity.json" ] && enrolled=yes
    if [ "$enrolled" = no ]; then
        [ -n "$CONTROLLER" ] || die "--controller URL is required to enroll (the agent URL, https://HOST:7443)"
        [ -n "$TOKEN" ] || die "--token cofre1.… is required to enroll"
    fi
    command -v curl >/dev/null 2>&1 || die "curl is required"

    file="cofre-agent-$(platform)"
    mkdir -p "$PREFIX/bin"
    # Beside the destination, so the final move is a rename on one file system.
    tmp="$PREFIX/bin/.cofre-agent.download.$$"
    trap 'rm -f "$tmp"' EXIT
    trap 'rm -f "$tmp"; exit 1' INT TERM HUP
    say "downloading $API/downloads/$file"
    if ! fetch -o "$tmp" "$API/downloads/$file"; then
        rm -f "$tmp"
        if [ -n "$PIN" ]; then
            die "cannot download $API/downloads/$file from a server with the pinned key (curl says why above; the controller says which platforms it serves)"
        fi
        die "cannot download $API/downloads/$file (curl says why above; the controller says which platforms it serves)"
    fi
    got=$(sha256_of "$tmp")
    if [ "$got" != "$SHA256" ]; then
        rm -f "$tmp"
        die "the download's SHA-256 is $got, not $SHA256 as given: it was altered or is another version; nothing was installed"
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$PREFIX/bin/cofre-agent"
    trap - EXIT INT TERM HUP
    say "installed $PREFIX/bin/cofre-agent (sha256 $got)"

    if [ "$enrolled" = yes ]; then
        say "already enrolled ($STATE_DIR/identity.json): kept this machine's identity"
    else
        say "enrolling with $CONTROLLER"
        "$PREFIX/bin/cofre-agent" --state-dir "$STATE_DIR" enroll --controller "$CONTROLLER" --token "$TOKEN" \
            || die "enrollment failed (the binary is installed; run the line again with a valid token)"
    fi

    if [ "$SYSTEMD" = yes ]; then
        command -v systemctl >/dev/null 2>&1 || die "systemctl not found: use --no-systemd and start '$PREFIX/bin/cofre-agent --state-dir $STATE_DIR run' another way"
        ensure_user
        # Enrollment ran as root; the service runs as cofre-agent (StateDirectory= hands over
        # only /var/lib/cofre-agent, so a --state-dir elsewhere is handed over here).
        chown -R cofre-agent:cofre-agent "$STATE_DIR"
        chmod 0700 "$STATE_DIR"
        write_unit "$UNIT_FILE"
        systemctl daemon-reload
        systemctl enable cofre-agent
        # restart, not start: after an upgrade the new binary must run.
        systemctl restart cofre-agent
        say "cofre-agent is running (systemctl status cofre-agent)"
    else
        say "no systemd unit written (--no-systemd): run '$PREFIX/bin/cofre-agent --state-dir $STATE_DIR run'"
    fi
}

main() {
    API=
    PIN=
    PIN_GIVEN=no
    PROTO='=https'
    CONTROLLER=
    TOKEN=
    SHA256=
    PREFIX=/usr/local
    STATE_DIR=/var/lib/cofre-agent
    SYSTEMD=yes
    UNINSTALL=no
    PURGE=no
    while [ $# -gt 0 ]; do
        case "$1" in
            --api) [ $# -ge 2 ] || die "$1 needs a value"; API=$2; shift 2 ;;
            --pin) [ $# -ge 2 ] || die "$1 needs a value"; PIN=$2; PIN_GIVEN=yes; shift 2 ;;
            --controller) [ $# -ge 2 ] || die "$1 needs a value"; CONTROLLER=$2; shift 2 ;;
            --token) [ $# -ge 2 ] || die "$1 needs a value"; TOKEN=$2; shift 2 ;;
            --sha256) [ $# -ge 2 ] || die "$1 needs a value"; SHA256=$2; shift 2 ;;
            --prefix) [ $# -ge 2 ] || die "$1 needs a value"; PREFIX=$2; shift 2 ;;
            --state-dir) [ $# -ge 2 ] || die "$1 needs a value"; STATE_DIR=$2; shift 2 ;;
            --no-systemd) SYSTEMD=no; shift ;;
            --uninstall) UNINSTALL=yes; shift ;;
            --purge) PURGE=yes; shift ;;
            -h | --help) usage ;;
            *) die "unknown option: $1 (see --help)" ;;
        esac
    done
    [ "$PURGE" = no ] || [ "$UNINSTALL" = yes ] || die "--purge goes with --uninstall"
    PREFIX=${PREFIX%/}
    UNIT_FILE=/etc/systemd/system/cofre-agent.service
    UNIT_REMOVED_NOTE=
    [ "$SYSTEMD" = yes ] && UNIT_REMOVED_NOTE=" and $UNIT_FILE"
    if [ "$UNINSTALL" = yes ]; then
        uninstall
    else
        install_agent
    fi
}

main "$@"
