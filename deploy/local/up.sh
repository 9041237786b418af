#!/usr/bin/env bash
# Runs Cofre locally, all in one: installs what is missing (PostgreSQL, restic), builds the
# binaries, then `cofre-controller up` creates (first run) or reuses its data directory with
# its own PostgreSQL, and prints where to log in. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/install-deps.sh
cargo build --workspace --bins --locked
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
echo "Binaries are in $bin (cofre-controller, cofre-agent, cofre-store, cofre)."
exec "$bin/cofre-controller" up "$@"
