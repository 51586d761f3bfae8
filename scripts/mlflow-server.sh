#!/usr/bin/env bash
# The shared tracking server on this machine: `mlflow server` on PostgreSQL, with the artifact
# proxy and MLflow's basic-auth app. PostgreSQL comes from Debian's package (installed when
# absent) and runs a cluster of its own in a project-local, git-ignored directory on a free
# port, with two databases: `mlflow` (the registry) and `mlflow_auth` (its users and grants).
#
#   scripts/mlflow-server.sh start | stop | status | uri | rotate-db-password
#
# With MLFLOW_SERVER_IMAGE set, the server is that image (deploy/mlflow/Dockerfile, `make
# image-mlflow`) instead of the venv's mlflow: a container on the host network, bound to
# 127.0.0.1, read-only, as its image's non-root user, with the artifacts directory mounted.
#
# Environment: MLFLOW_PORT (5001), HEARTML_RUN_DIR (.run), MLFLOW_BIN (.venv/bin/mlflow),
# MLFLOW_SERVER_IMAGE (unset).
# Secrets, each generated at the first start into $HEARTML_RUN_DIR (mode 600) and passed to
# MLflow through its environment only, never on a command line or in a log:
#   pg.password          the database password (libpq's PGPASSWORD; no URI carries it)
#   mlflow-admin.password  the auth app's admin, created with it at the first start
#   mlflow-secret.key    the Flask secret key of the auth app (CSRF of its sign-up form)
# The accounts that use the registry (pipeline, serving, people) are made by
# `heartml registry bootstrap` (make registry-bootstrap), which `make mlflow-server` runs.
set -euo pipefail

RUN_DIR=$(realpath -m "${HEARTML_RUN_DIR:-.run}")
PORT=${MLFLOW_PORT:-5001}
MLFLOW_BIN=${MLFLOW_BIN:-$(realpath -m .venv/bin/mlflow)}
PGDATA="$RUN_DIR/pgdata"
PG_PORT_FILE="$RUN_DIR/pg.port"
PASSWORD_FILE="$RUN_DIR/pg.password"
ADMIN_PASSWORD_FILE="$RUN_DIR/mlflow-admin.password"
SECRET_KEY_FILE="$RUN_DIR/mlflow-secret.key"
# The auth app's configuration (no secret in it): the same file the MLflow image carries.
AUTH_CONFIG=$(realpath -m "$(dirname "$0")/../deploy/mlflow/basic_auth.ini")
MLFLOW_PID="$RUN_DIR/mlflow.pid"
MLFLOW_CONTAINER="$RUN_DIR/mlflow.container"
ARTIFACTS="$RUN_DIR/mlartifacts"
IMAGE=${MLFLOW_SERVER_IMAGE:-}

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && printf '%s' "$dir"
}

ensure_postgres() {
  if [ -z "$(pg_bin)" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    say "installing PostgreSQL from Debian's packages…"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  [ -n "$(pg_bin)" ] || die "PostgreSQL could not be installed"
}

# Root may not run the server; the Debian package's postgres user does.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
mlflow_running() {
  if [ -f "$MLFLOW_CONTAINER" ]; then
    [ "$(docker inspect -f '{{.State.Running}}' "$(cat "$MLFLOW_CONTAINER")" 2>/dev/null)" = true ]
  else
    [ -f "$MLFLOW_PID" ] && kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null
  fi
}

# new_secret FILE: a random secret in FILE (mode 600), unless FILE exists already.
new_secret() {
  [ -f "$1" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$1")
}

start_postgres() {
  ensure_postgres
  local bin; bin=$(pg_bin)
  mkdir -p "$RUN_DIR"
  new_secret "$PASSWORD_FILE"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA" && chmod 700 "$PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres -A trust --no-instructions >/dev/null
  fi
  # Local socket only for the superuser; MLflow logs in over TCP with its password, to the
  # registry's database and to the auth app's (written at every start: a cluster made before
  # the auth database existed gets its line too).
  printf 'local all postgres trust\nhost mlflow,mlflow_auth mlflow 127.0.0.1/32 scram-sha-256\n' >"$PGDATA/pg_hba.conf"
  [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA/pg_hba.conf"
  if pg_running; then
    as_pg "$bin/pg_ctl" -D "$PGDATA" reload >/dev/null
  else
    free_port >"$PG_PORT_FILE"
    as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
      -o "-p $(cat "$PG_PORT_FILE") -k $PGDATA -c listen_addresses=127.0.0.1" start >/dev/null
  fi
  local pg_port; pg_port=$(cat "$PG_PORT_FILE")
  local psql=("$bin/psql" -h "$PGDATA" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 -qtA)
  # The password goes through psql's standard input, never through argv.
  if [ -z "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")" ]; then
    printf "CREATE ROLE mlflow LOGIN PASSWORD '%s';\n" "$(cat "$PASSWORD_FILE")" | as_pg "${psql[@]}" >/dev/null
  fi
  if [ -z "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" ]; then
    as_pg "${psql[@]}" -c "CREATE DATABASE mlflow OWNER mlflow" >/dev/null
  fi
  if [ -z "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow_auth'")" ]; then
    as_pg "${psql[@]}" -c "CREATE DATABASE mlflow_auth OWNER mlflow" >/dev/null
  fi
}

# The registry's database, without the password: libpq reads it from PGPASSWORD.
backend_uri() { printf 'postgresql://mlflow@127.0.0.1:%s/mlflow' "$(cat "$PG_PORT_FILE")"; }

# export_server_env: what `mlflow server` reads from its environment, secrets included. Only
# the server's own processes (and the docker client, which hands it to the container with
# `-e NAME`) inherit it: the values never appear in an argv.
export_server_env() {
  new_secret "$ADMIN_PASSWORD_FILE"
  new_secret "$SECRET_KEY_FILE"
  export PGHOST=127.0.0.1 PGUSER=mlflow
  PGPORT=$(cat "$PG_PORT_FILE")
  PGPASSWORD=$(cat "$PASSWORD_FILE")
  MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$ADMIN_PASSWORD_FILE")
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$SECRET_KEY_FILE")
  MLFLOW_BACKEND_STORE_URI=$(backend_uri)
  export PGPORT PGPASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_BACKEND_STORE_URI
  # Creating experiments and models needs a grant on the workspace (see basic_auth.ini), and
  # no job runner: heartml schedules no MLflow jobs, and it would start seven worker processes.
  export MLFLOW_ENABLE_WORKSPACES=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
}

SERVER_ENV=(PGHOST PGPORT PGUSER PGPASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
  MLFLOW_BACKEND_STORE_URI MLFLOW_ENABLE_WORKSPACES MLFLOW_SERVER_ENABLE_JOB_EXECUTION)

start_process() {
  [ -x "$MLFLOW_BIN" ] || die "$MLFLOW_BIN not found (run make install)"
  (
    export_server_env
    export MLFLOW_AUTH_CONFIG_PATH="$AUTH_CONFIG"
    # Bring the schema up to date first: a store made by an older MLflow needs its migrations.
    "$MLFLOW_BIN" db upgrade "$MLFLOW_BACKEND_STORE_URI" >/dev/null 2>"$RUN_DIR/upgrade.log" \
      || die "mlflow db upgrade failed (see $RUN_DIR/upgrade.log)"
    setsid "$MLFLOW_BIN" server --app-name basic-auth \
      --artifacts-destination "$ARTIFACTS" --serve-artifacts \
      --host 127.0.0.1 --port "$PORT" --workers 2 >"$RUN_DIR/mlflow.log" 2>&1 &
    echo $! >"$MLFLOW_PID"
  )
}

# The image carries basic_auth.ini (MLFLOW_AUTH_CONFIG_PATH); the secrets reach the container
# through docker's environment (`-e NAME`), not its command line.
start_container() {
  local name="heartml-mlflow-$PORT"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE (make image-mlflow)"
  # The image's user (10001) writes the artifacts.
  if [ "$(id -u)" = 0 ]; then chown -R 10001:10001 "$ARTIFACTS"; else chmod 0777 "$ARTIFACTS"; fi
  (
    export_server_env
    local run=(--network host --read-only --tmpfs "/tmp:rw,nosuid,nodev" --cap-drop ALL
      --security-opt no-new-privileges:true -v "$ARTIFACTS:/mlartifacts")
    local var
    for var in "${SERVER_ENV[@]}"; do run+=(-e "$var"); done
    docker rm -f "$name" >/dev/null 2>&1 || true
    # shellcheck disable=SC2016  # expanded by the container's shell
    docker run --rm "${run[@]}" "$IMAGE" sh -c 'mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"' \
      >/dev/null 2>"$RUN_DIR/upgrade.log" || die "mlflow db upgrade failed (see $RUN_DIR/upgrade.log)"
    docker run -d --name "$name" "${run[@]}" "$IMAGE" mlflow server --app-name basic-auth \
      --artifacts-destination /mlartifacts --serve-artifacts \
      --host 127.0.0.1 --port "$PORT" --workers 2 >/dev/null || die "docker run $IMAGE failed"
  )
  echo "$name" >"$MLFLOW_CONTAINER"
}

stop_container() {
  local name; name=$(cat "$MLFLOW_CONTAINER")
  docker logs "$name" >"$RUN_DIR/mlflow.log" 2>&1 || true
  docker rm -f "$name" >/dev/null 2>&1 || true
  rm -f "$MLFLOW_CONTAINER"
}

start() {
  start_postgres
  if mlflow_running; then
    say "MLflow server already running: $(cat "$RUN_DIR/mlflow.uri")"
    return
  fi
  mkdir -p "$ARTIFACTS"
  if [ -n "$IMAGE" ]; then start_container; else start_process; fi
  echo "http://127.0.0.1:$PORT" >"$RUN_DIR/mlflow.uri"
  for _ in $(seq 1 180); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
      say "MLflow server${IMAGE:+ (container of $IMAGE)} on http://127.0.0.1:$PORT (PostgreSQL on port $(cat "$PG_PORT_FILE"), artifacts in $ARTIFACTS)"
      say "authentication on: admin account 'admin', password in $ADMIN_PASSWORD_FILE"
      return
    fi
    if ! mlflow_running; then
      [ -f "$MLFLOW_CONTAINER" ] && stop_container
      die "MLflow server exited (see $RUN_DIR/mlflow.log)"
    fi
    sleep 0.5
  done
  [ -f "$MLFLOW_CONTAINER" ] && stop_container
  die "MLflow server did not answer on port $PORT within 90 s (see $RUN_DIR/mlflow.log)"
}

stop_mlflow() {
  [ -f "$MLFLOW_CONTAINER" ] && stop_container
  if mlflow_running; then
    local pid; pid=$(cat "$MLFLOW_PID")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$MLFLOW_PID"
}

stop() {
  stop_mlflow
  if [ -n "$(pg_bin)" ] && pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  say "MLflow server and PostgreSQL stopped"
}

# A new database password: generated, set in PostgreSQL (through psql's standard input), and
# MLflow restarted on it. The old password stops working at once.
rotate_db_password() {
  pg_running || die "PostgreSQL is not running (scripts/mlflow-server.sh start)"
  local bin; bin=$(pg_bin)
  local next="$PASSWORD_FILE.next"
  rm -f "$next"
  new_secret "$next"
  printf "ALTER ROLE mlflow PASSWORD '%s';\n" "$(cat "$next")" \
    | as_pg "$bin/psql" -h "$PGDATA" -p "$(cat "$PG_PORT_FILE")" -U postgres -v ON_ERROR_STOP=1 -qtA >/dev/null
  mv "$next" "$PASSWORD_FILE"
  say "database password rotated ($PASSWORD_FILE); restarting MLflow on it"
  if mlflow_running; then stop_mlflow; start; fi
}

status() {
  if mlflow_running; then say "MLflow server: running, $(cat "$RUN_DIR/mlflow.uri")"; else say "MLflow server: stopped"; fi
  if [ -n "$(pg_bin)" ] && pg_running; then say "PostgreSQL: running on port $(cat "$PG_PORT_FILE")"; else say "PostgreSQL: stopped"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  uri) cat "$RUN_DIR/mlflow.uri" ;;
  rotate-db-password) rotate_db_password ;;
  *) die "usage: $0 start|stop|status|uri|rotate-db-password" ;;
esac
