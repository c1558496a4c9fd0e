#!/usr/bin/env bash
# For the PostgreSQL state tests: Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres)
# and pg_dump. The tests start their own server on 127.0.0.1; nothing is started here.
# Idempotent: does nothing when initdb is already installed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
else
    echo "tests/setup_postgres.sh: install Debian's postgresql (sudo apt-get install postgresql)" >&2
    exit 1
fi
