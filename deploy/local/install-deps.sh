#!/usr/bin/env bash
# Installs what Cofre's local start and test suite need when it is missing, and nothing else:
# PostgreSQL 15 (initdb/pg_ctl), the restic CLI, and (for tests) rustic-server, schemathesis, aiosmtpd (an SMTP
# sink the alert tests deliver to), headless Chromium with chromedriver and axe-core (the portal's browser tests).
# Usage: deploy/local/install-deps.sh [--tests]
set -euo pipefail

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

have_pg() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

apt_pkgs=()
have_pg || apt_pkgs+=(postgresql)
command -v restic >/dev/null 2>&1 || apt_pkgs+=(restic)
id postgres >/dev/null 2>&1 || apt_pkgs+=(postgresql)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${apt_pkgs[*]}; install them (as root: apt-get install ${apt_pkgs[*]})" >&2
    exit 1
  fi
  echo "installing: ${apt_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# Debian keeps the PostgreSQL tools off PATH.
if ! command -v initdb >/dev/null 2>&1; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  echo "PostgreSQL tools are in $pgbin (Cofre finds them there)"
fi

if [ $want_tests = 1 ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v rustic-server >/dev/null 2>&1; then
    echo "installing rustic-server (test fixture; takes a few minutes)"
    cargo install rustic_server --version 0.4.4 --locked --quiet
  fi
  if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "installing aiosmtpd (test fixture: an SMTP sink)"
    python3 -m pip install --quiet aiosmtpd 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages aiosmtpd
  fi
  browser_pkgs=()
  command -v chromium >/dev/null 2>&1 || browser_pkgs+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || browser_pkgs+=(chromium-driver)
  command -v npm >/dev/null 2>&1 || browser_pkgs+=(npm)
  if [ ${#browser_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "missing packages for the portal's browser tests: ${browser_pkgs[*]} (as root: apt-get install ${browser_pkgs[*]})" >&2
      exit 1
    fi
    echo "installing: ${browser_pkgs[*]} (the portal's browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser_pkgs[@]}" >/dev/null
  fi
  axe_dir="$HOME/.cache/cofre/axe"
  if [ ! -f "$axe_dir/node_modules/axe-core/axe.min.js" ]; then
    echo "installing axe-core (accessibility checks of the portal) into $axe_dir"
    mkdir -p "$axe_dir"
    npm install --prefix "$axe_dir" --no-audit --no-fund --silent 'axe-core@4' >/dev/null
  fi
  if ! command -v st >/dev/null 2>&1; then
    echo "installing schemathesis (test tool: fuzzes the REST API from its OpenAPI document)"
    python3 -m pip install --quiet 'schemathesis>=4,<5' 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages 'schemathesis>=4,<5'
  fi
fi
