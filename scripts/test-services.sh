#!/usr/bin/env bash
# Real PostgreSQL and Redis for the test suites, on 127.0.0.1 only, in throwaway directories.
#   scripts/test-services.sh up     install what is missing, start both, write the env file
#   scripts/test-services.sh down   stop both and remove their data
# The env file (printed by `up`) exports ZEROFN_TEST_POSTGRES and ZEROFN_TEST_REDIS.
set -euo pipefail

# Derived from the checkout's path, so test runs in two checkouts on one machine never share (or
# stop) each other's servers.
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
SLOT=$(( $(printf '%s' "$CHECKOUT" | cksum | cut -d' ' -f1) % 500 ))
ROOT="${ZEROFN_SERVICES_DIR:-/tmp/zerofn-test-services-$(id -u)-$SLOT}"
PG_PORT="${ZEROFN_TEST_PG_PORT:-$((54000 + SLOT))}"
REDIS_PORT="${ZEROFN_TEST_REDIS_PORT:-$((63000 + SLOT))}"
ENV_FILE="$ROOT/env"

say() { printf 'test-services: %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    say "need $* but cannot install it without root: install it (Debian: apt-get install $*) and retry"
    exit 1
  fi
  say "installing $* (Debian packages)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  fi
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    apt_install postgresql
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$dir"
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}

up() {
  down quiet
  mkdir -p "$ROOT"
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  local bin
  bin=$(pg_bin)

  mkdir -p "$ROOT/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$ROOT/pg"
  as_postgres "'$bin/initdb' -D '$ROOT/pg/data' -A trust -U postgres --no-sync -E UTF8 >'$ROOT/pg/initdb.log' 2>&1"
  as_postgres "'$bin/pg_ctl' -D '$ROOT/pg/data' -l '$ROOT/pg/server.log' -o \"-c listen_addresses=127.0.0.1 -p $PG_PORT -k '$ROOT/pg' -c fsync=off -c max_connections=200\" -w -t 30 start >/dev/null"
  as_postgres "'$bin/psql' -h 127.0.0.1 -p $PG_PORT -U postgres -q -c 'CREATE DATABASE zerofn' >/dev/null"

  mkdir -p "$ROOT/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --databases 1024 --dir "$ROOT/redis" \
    --daemonize yes --pidfile "$ROOT/redis/redis.pid" --logfile "$ROOT/redis/redis.log"
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null

  cat >"$ENV_FILE" <<ENV
export ZEROFN_TEST_POSTGRES=postgres://postgres@127.0.0.1:$PG_PORT/zerofn
export ZEROFN_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT
ENV
  say "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"
  echo "$ENV_FILE"
}

down() {
  local quiet="${1:-}"
  if [ -f "$ROOT/pg/data/postmaster.pid" ]; then
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$bin" ] && as_postgres "'$bin/pg_ctl' -D '$ROOT/pg/data' -m immediate -w stop >/dev/null 2>&1" || true
  fi
  if [ -f "$ROOT/redis/redis.pid" ]; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$ROOT/redis/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$ROOT"
  [ -n "$quiet" ] || say "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
