#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, builds the binaries the
# end-to-end tests run, starts a throwaway PostgreSQL for the database tests, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

deploy/local/install-deps.sh --tests
export PATH="$HOME/.cargo/bin:$PATH"
pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

echo "== format and lints (gates: a change that is not formatted or not clippy-clean fails here)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --bins --locked

echo "== throwaway PostgreSQL for database tests"
pgroot=$(mktemp -d /tmp/cofre-test-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres:postgres "$pgroot"
  as_pg=(runuser -u postgres --)
fi
stop_pg() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgroot/data" -m immediate stop -w >/dev/null 2>&1 || true; rm -rf "$pgroot"; }
trap stop_pg EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$pgroot/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgroot/data" -l "$pgroot/log" -w -t 30 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $pgroot -c fsync=off -c max_connections=200" start >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"

echo "== tests"
cargo test --workspace --locked -- --test-threads "${COFRE_TEST_THREADS:-2}"
