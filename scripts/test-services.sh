#!/usr/bin/env bash
# Real PostgreSQL, Redis and a Kafka-protocol broker (tansu) for the test suites, on 127.0.0.1 only, in
# throwaway directories (and headless Chromium with chromedriver for the dashboard's browser test,
# installed if missing).
#   scripts/test-services.sh up     install what is missing, start both, write the env file
#   scripts/test-services.sh down   stop both and remove their data
#   scripts/test-services.sh bench-tools   install nginx and wrk (make bench) if missing
# The env file (printed by `up`) exports ZEROFN_TEST_POSTGRES and ZEROFN_TEST_REDIS, and for a second Redis
# that speaks TLS only and wants a password (its certificate from a throwaway CA made here with openssl)
# ZEROFN_TEST_REDIS_TLS (a rediss:// URL) and ZEROFN_TEST_REDIS_CA (the CA's PEM); the broker's address as
# ZEROFN_TEST_KAFKA and KAFKA_BROKERS.
set -euo pipefail

# Derived from the checkout's path, so test runs in two checkouts on one machine never share (or
# stop) each other's servers.
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
SLOT=$(( $(printf '%s' "$CHECKOUT" | cksum | cut -d' ' -f1) % 500 ))
ROOT="${ZEROFN_SERVICES_DIR:-/tmp/zerofn-test-services-$(id -u)-$SLOT}"
PG_PORT="${ZEROFN_TEST_PG_PORT:-$((54000 + SLOT))}"
REDIS_PORT="${ZEROFN_TEST_REDIS_PORT:-$((63000 + SLOT))}"
REDIS_TLS_PORT="${ZEROFN_TEST_REDIS_TLS_PORT:-$((62000 + SLOT))}"
KAFKA_PORT="${ZEROFN_TEST_KAFKA_PORT:-$((61000 + SLOT))}"
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

  # Redis over TLS, as the chart connects to it: a CA and a certificate for 127.0.0.1, valid two days.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  local tls="$ROOT/redis-tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 2 -subj "/CN=zerofn test CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -out "$tls/server.pem" -days 2 -extfile "$tls/ext" 2>/dev/null
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$tls/server.pem" \
    --tls-key-file "$tls/server.key" --tls-ca-cert-file "$tls/ca.pem" --tls-auth-clients no --requirepass zerofn-test \
    --save '' --appendonly no --databases 16 --dir "$tls" --daemonize yes --pidfile "$tls/redis.pid" --logfile "$tls/redis.log"
  for _ in $(seq 1 100); do
    redis-cli --tls --cacert "$tls/ca.pem" -h 127.0.0.1 -p "$REDIS_TLS_PORT" --no-auth-warning -a zerofn-test ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  redis-cli --tls --cacert "$tls/ca.pem" -h 127.0.0.1 -p "$REDIS_TLS_PORT" --no-auth-warning -a zerofn-test ping >/dev/null

  # A Kafka-protocol broker (tansu, sqlite engine), built once into a cache outside the clone.
  local tansu
  tansu=$("$CHECKOUT/scripts/tansu.sh")
  mkdir -p "$ROOT/kafka"
  # tansu joins a sqlite:/// path onto its working directory: start it inside its data dir.
  (
    cd "$ROOT/kafka"
    nohup "$tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine sqlite://tansu.db \
      </dev/null >"$ROOT/kafka/broker.log" 2>&1 &
    echo $! >"$ROOT/kafka/broker.pid"
  )
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break
    sleep 0.05
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null || { say "tansu did not start: $(tail -n 5 "$ROOT/kafka/broker.log")"; exit 1; }

  # Headless Chromium and its WebDriver, for the dashboard's browser test.
  command -v chromedriver >/dev/null 2>&1 || apt_install chromium chromium-driver

  cat >"$ENV_FILE" <<ENV
export ZEROFN_TEST_POSTGRES=postgres://postgres@127.0.0.1:$PG_PORT/zerofn
export ZEROFN_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT
export ZEROFN_TEST_REDIS_TLS=rediss://:zerofn-test@127.0.0.1:$REDIS_TLS_PORT
export ZEROFN_TEST_REDIS_CA=$tls/ca.pem
export ZEROFN_TEST_CHROMEDRIVER=$(command -v chromedriver)
export ZEROFN_TEST_KAFKA=127.0.0.1:$KAFKA_PORT
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
ENV
  say "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT (TLS: $REDIS_TLS_PORT), Kafka (tansu) on 127.0.0.1:$KAFKA_PORT"
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
  if [ -f "$ROOT/kafka/broker.pid" ]; then
    kill "$(cat "$ROOT/kafka/broker.pid")" 2>/dev/null || true
  fi
  if [ -f "$ROOT/redis-tls/redis.pid" ]; then
    kill "$(cat "$ROOT/redis-tls/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$ROOT"
  [ -n "$quiet" ] || say "stopped"
}

# make bench's load generator and the reverse proxy the gateway is measured against.
bench_tools() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx-light
  command -v wrk >/dev/null 2>&1 || apt_install wrk
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  bench-tools) bench_tools ;;
  *) echo "usage: $0 up|down|bench-tools" >&2; exit 2 ;;
esac
