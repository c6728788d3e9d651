# Finding or starting a PostgreSQL for tests and benchmarks (sourced by scripts/test and
# scripts/bench). Sets PG_URL (an admin URL whose user may CREATE DATABASE) and PG_ORIGIN;
# for a private cluster also PG_PRIVATE_DIR (its data is in $PG_PRIVATE_DIR/data).

pg_answers() {
  command -v psql >/dev/null 2>&1 || return 1
  psql "$1" -Atqc "SELECT 1" >/dev/null 2>&1
}

# A free TCP port on 127.0.0.1.
pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] && echo "$found"
}

pg_install() {
  if [ -z "$(pg_bin initdb)" ] || ! command -v psql >/dev/null 2>&1; then
    echo "postgres.sh: installing PostgreSQL (apt)…" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >&2
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >&2
    fi
  fi
}

PG_PRIVATE_DIR=""
PG_CTL_AS=()

pg_find_or_start() {
  # TETHER_TEST_PG=private skips 1 and 2 (a cluster the tests may restart).
  if [ "${TETHER_TEST_PG:-}" = private ]; then pg_start_private; return; fi
  if [[ "${DATABASE_URL:-}" == postgres* ]] && pg_answers "$DATABASE_URL"; then
    PG_URL=$DATABASE_URL; PG_ORIGIN="DATABASE_URL"; return
  fi
  local local_url="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_answers "$local_url"; then
    PG_URL=$local_url; PG_ORIGIN="the machine's server"; return
  fi
  pg_start_private
}

# initdb and pg_ctl refuse to run as root: as root, the private cluster runs as postgres.
pg_run_as() {
  PG_CTL_AS=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    PG_CTL_AS=(runuser -u postgres --)
  fi
}

# Starts a private cluster on a free port under target/pg (or under $1).
pg_start_private() {
  pg_install
  pg_run_as
  local port; port=$(pg_free_port)
  PG_PRIVATE_DIR="${1:-$PWD/target/pg}/$port"
  rm -rf "$PG_PRIVATE_DIR"; mkdir -p "$PG_PRIVATE_DIR"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PG_PRIVATE_DIR"
  "${PG_CTL_AS[@]}" "$(pg_bin initdb)" -D "$PG_PRIVATE_DIR/data" -U postgres -A trust >/dev/null
  "${PG_CTL_AS[@]}" "$(pg_bin pg_ctl)" -D "$PG_PRIVATE_DIR/data" -l "$PG_PRIVATE_DIR/log" -w \
    -o "-p $port -k $PG_PRIVATE_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"; PG_ORIGIN="a private cluster in $PG_PRIVATE_DIR"
}

# pg_ctl on the private cluster in $1 (e.g. `pg_private_ctl DIR restart -m immediate`).
pg_private_ctl() {
  local dir=$1; shift
  pg_run_as
  "${PG_CTL_AS[@]}" "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/log" -w "$@" >/dev/null
}

# Drops the test databases and stops a private cluster.
pg_cleanup() {
  if [ -n "${PG_URL:-}" ] && pg_answers "$PG_URL"; then
    psql "$PG_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'tether\_t\_%'" 2>/dev/null |
      while read -r db; do psql "$PG_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done
  fi
  if [ -n "$PG_PRIVATE_DIR" ]; then
    "${PG_CTL_AS[@]}" "$(pg_bin pg_ctl)" -D "$PG_PRIVATE_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_PRIVATE_DIR"
  fi
}
