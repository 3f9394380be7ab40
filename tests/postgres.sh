#!/usr/bin/env bash
# The storage, engine and API tests on a throwaway PostgreSQL server (`make test-postgres`).
#
# Installs the Debian package `postgresql` when its binaries are missing (as root, with apt-get), makes a new
# cluster in a temporary directory, serves it on a unix socket in that directory only (no TCP port, so it
# never clashes with another server), runs pytest with MATCHER_TEST_DB_URL pointing at it, then stops the
# server and removes the directory, whatever happened. Exits with pytest's status.
#
#   tests/postgres.sh                       # the default test files below
#   tests/postgres.sh -x --durations=5      # the same with more pytest options
#   tests/postgres.sh tests/models -k seq   # other test files (any argument under tests/ replaces the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${TEST_PYTHON:-.venv/bin/python}  # TEST_PYTHON: another interpreter with the requirements
# The storage, API (in process and under gunicorn), engine, digest and past-work tests, and the ranking tests' second process:
# the code that reads and writes the store. The rest of tests/matcher (batch files, consortia, schedules, CLI,
# evaluation) works on top of the engine and adds time, not database coverage.
paths=0
for arg in "$@"; do
  case $arg in tests/*|./tests/*) paths=1 ;; esac
done
if [ $paths = 0 ]; then
  set -- "$@" tests/models tests/service tests/matcher/test_engine.py tests/matcher/test_digest.py tests/matcher/test_ranking.py tests/matcher/test_past_work.py
fi

pg_bin() {  # the directory of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin
  local p
  if p=$(command -v initdb 2>/dev/null) && [ -x "$(dirname "$(readlink -f "$p")")/pg_ctl" ]; then
    dirname "$(readlink -f "$p")"
    return
  fi
  p=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$p" ] && [ -x "$p/initdb" ] && [ -x "$p/pg_ctl" ] && echo "$p"
}

PGBIN=$(pg_bin || true)
if [ -z "$PGBIN" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-postgres: installing the Debian package postgresql" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    PGBIN=$(pg_bin || true)
  fi
  if [ -z "$PGBIN" ]; then
    echo "test-postgres: PostgreSQL (initdb, pg_ctl) is not installed and could not be installed" >&2
    exit 1
  fi
fi

# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user (the package makes it).
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  AS_PG=(runuser -u postgres --)
fi

DIR=$(mktemp -d /tmp/matcher-pg.XXXXXX)  # short: a unix socket path must stay under 108 bytes
[ ${#AS_PG[@]} -eq 0 ] || chown postgres "$DIR"
PGDATA="$DIR/data"
LOG="$DIR/server.log"

cleanup() {
  if [ -f "$PGDATA/postmaster.pid" ]; then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-locale --encoding=UTF8 --no-sync >/dev/null
# A test server: no TCP, and no durability (fsync off) since the data is thrown away. Its time zone is far from
# UTC (+13:45/+12:45), so a timestamp read back in the session's zone instead of UTC shows in the tests.
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG" -w -t 60 \
  -o "-c listen_addresses='' -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c TimeZone=Pacific/Chatham" \
  start >/dev/null || { cat "$LOG" >&2; exit 1; }
"${AS_PG[@]}" "$PGBIN/createdb" -h "$DIR" -U postgres matcher_test

echo "test-postgres: PostgreSQL $("$PGBIN/pg_ctl" --version | awk '{print $3}') on $DIR" >&2
status=0
MATCHER_TEST_DB_URL="postgresql+psycopg://postgres@/matcher_test?host=$DIR" \
  "$PYTHON" -m pytest -q "$@" || status=$?
exit $status
