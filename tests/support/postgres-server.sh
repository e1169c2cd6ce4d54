#!/usr/bin/env bash
# PostgreSQL's server programs for the storage tests (tests/support/postgres.py starts its own
# throwaway server from them): found as the tests find them (PG_BINDIR, pg_config --bindir,
# /usr/lib/postgresql/*/bin, PATH), else installed from Debian's/Ubuntu's packages. Part of
# README step 2 and of .ci/run; does nothing when they are there.
set -euo pipefail

has_postgres_server() {
    local dir
    for dir in "${PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" \
               /usr/lib/postgresql/*/bin "$(dirname "$(command -v initdb || echo /none/initdb)")"; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            return 0
        fi
    done
    return 1
}

has_postgres_server && exit 0
if ! command -v apt-get >/dev/null; then
    echo "The storage tests need PostgreSQL's server programs (initdb, pg_ctl, postgres)." >&2
    echo "Install them (Homebrew: brew install postgresql@16; Fedora: dnf install" \
         "postgresql-server), or name their folder in PG_BINDIR." >&2
    exit 1
fi
echo "== installing PostgreSQL's server for the storage tests (apt-get install postgresql)"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
has_postgres_server || { echo "PostgreSQL's server programs are still missing" >&2; exit 1; }
