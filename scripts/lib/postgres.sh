# shellcheck shell=bash
# A private PostgreSQL server for tests: installed from Debian when missing, initialised in a
# temp dir, listening on 127.0.0.1 on a free port, stopped by pg_test_stop (or the caller's
# EXIT trap). Sourced by scripts/test and scripts/postgres.

pg_test_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $bin || ! -x $bin/initdb ]]; then
    [[ $(id -u) == 0 ]] || { echo "postgresql is not installed; run as root to install it" >&2; return 1; }
    apt-get install -y postgresql >&2 || { apt-get update >&2 && apt-get install -y postgresql >&2; }
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  printf '%s\n' "$bin"
}

# pg_test_start: starts the server and exports ATOLL_TEST_POSTGRES_URL and PG_TEST_DIR. fsync is off
# (tests need no durability from it) unless PG_TEST_FSYNC=on (benchmarks).
pg_test_start() {
  local bin port run_as=()
  bin=$(pg_test_bin) || return 1
  PG_TEST_DIR=$(mktemp -d /tmp/atoll-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$PG_TEST_DIR"
    run_as=(runuser -u postgres --)
  fi
  "${run_as[@]}" "$bin/initdb" -D "$PG_TEST_DIR/data" -A trust -U atoll --no-sync >/dev/null
  "${run_as[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
    -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c fsync=${PG_TEST_FSYNC:-off} -c max_connections=300" start >/dev/null
  export PG_TEST_DIR PG_TEST_BIN=$bin
  export ATOLL_TEST_POSTGRES_URL="postgres://atoll@127.0.0.1:$port/postgres"
  echo "postgresql $("$bin/postgres" --version | awk '{print $3}') for tests at $ATOLL_TEST_POSTGRES_URL"
}

pg_test_stop() {
  [[ -n ${PG_TEST_DIR:-} && -d $PG_TEST_DIR/data ]] || return 0
  local run_as=()
  [[ $(id -u) == 0 ]] && run_as=(runuser -u postgres --)
  "${run_as[@]}" "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TEST_DIR"
}
