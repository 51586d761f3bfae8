#!/usr/bin/env bash
# The shared tracking server on this machine: `mlflow server` on PostgreSQL, with the artifact
# proxy. PostgreSQL comes from Debian's package (installed when absent) and runs a cluster of
# its own in a project-local, git-ignored directory on a free port.
#
#   scripts/mlflow-server.sh start | stop | status | uri
#
# With MLFLOW_SERVER_IMAGE set, the server is that image (deploy/mlflow/Dockerfile, `make
# image-mlflow`) instead of the venv's mlflow: a container on the host network, bound to
# 127.0.0.1, read-only, as its image's non-root user, with the artifacts directory mounted.
#
# Environment: MLFLOW_PORT (5001), HEARTML_RUN_DIR (.run), MLFLOW_BIN (.venv/bin/mlflow),
# MLFLOW_SERVER_IMAGE (unset).
# The database password is generated once into $HEARTML_RUN_DIR/pg.password (mode 600); it is
# passed to MLflow through the environment, never on a command line or in a log.
set -euo pipefail

RUN_DIR=$(realpath -m "${HEARTML_RUN_DIR:-.run}")
PORT=${MLFLOW_PORT:-5001}
MLFLOW_BIN=${MLFLOW_BIN:-$(realpath -m .venv/bin/mlflow)}
PGDATA="$RUN_DIR/pgdata"
PG_PORT_FILE="$RUN_DIR/pg.port"
PASSWORD_FILE="$RUN_DIR/pg.password"
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

start_postgres() {
  ensure_postgres
  local bin; bin=$(pg_bin)
  mkdir -p "$RUN_DIR"
  if [ ! -f "$PASSWORD_FILE" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$PASSWORD_FILE")
  fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA" && chmod 700 "$PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres -A trust --no-instructions >/dev/null
    # Local socket only for the superuser; MLflow logs in over TCP with its password.
    printf 'local all postgres trust\nhost mlflow mlflow 127.0.0.1/32 scram-sha-256\n' >"$PGDATA/pg_hba.conf"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA/pg_hba.conf"
  fi
  if ! pg_running; then
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
}

backend_uri() {
  printf 'postgresql://mlflow:%s@127.0.0.1:%s/mlflow' "$(cat "$PASSWORD_FILE")" "$(cat "$PG_PORT_FILE")"
}

start_process() {
  [ -x "$MLFLOW_BIN" ] || die "$MLFLOW_BIN not found (run make install)"
  # Bring the schema up to date first: a store made by an older MLflow needs its migrations.
  MLFLOW_BACKEND_STORE_URI=$(backend_uri) "$MLFLOW_BIN" db upgrade "$(backend_uri)" >/dev/null 2>"$RUN_DIR/upgrade.log" \
    || die "mlflow db upgrade failed (see $RUN_DIR/upgrade.log)"
  MLFLOW_BACKEND_STORE_URI=$(backend_uri) setsid "$MLFLOW_BIN" server \
    --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    --host 127.0.0.1 --port "$PORT" --workers 2 >"$RUN_DIR/mlflow.log" 2>&1 &
  echo $! >"$MLFLOW_PID"
}

# The database URI (with its password) reaches the container through docker's environment
# (`-e NAME`), not its command line.
start_container() {
  local name="heartml-mlflow-$PORT"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE (make image-mlflow)"
  # The image's user (10001) writes the artifacts.
  if [ "$(id -u)" = 0 ]; then chown -R 10001:10001 "$ARTIFACTS"; else chmod 0777 "$ARTIFACTS"; fi
  MLFLOW_BACKEND_STORE_URI=$(backend_uri)
  export MLFLOW_BACKEND_STORE_URI
  local run=(--network host --read-only --tmpfs "/tmp:rw,nosuid,nodev" --cap-drop ALL
    --security-opt no-new-privileges:true -e MLFLOW_BACKEND_STORE_URI -v "$ARTIFACTS:/mlartifacts")
  docker rm -f "$name" >/dev/null 2>&1 || true
  # shellcheck disable=SC2016  # expanded by the container's shell
  docker run --rm "${run[@]}" "$IMAGE" sh -c 'mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"' \
    >/dev/null 2>"$RUN_DIR/upgrade.log" || die "mlflow db upgrade failed (see $RUN_DIR/upgrade.log)"
  docker run -d --name "$name" "${run[@]}" "$IMAGE" mlflow server \
    --artifacts-destination /mlartifacts --serve-artifacts \
    --host 127.0.0.1 --port "$PORT" --workers 2 >/dev/null || die "docker run $IMAGE failed"
  unset MLFLOW_BACKEND_STORE_URI
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
      say "use it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
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

stop() {
  [ -f "$MLFLOW_CONTAINER" ] && stop_container
  if mlflow_running; then
    local pid; pid=$(cat "$MLFLOW_PID")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$MLFLOW_PID"
  if [ -n "$(pg_bin)" ] && pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  say "MLflow server and PostgreSQL stopped"
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
  *) die "usage: $0 start|stop|status|uri" ;;
esac
