#!/usr/bin/env bash
# A Docker engine for machines that have none running (no systemd, as on this team's build
# machines): `make docker-up` / `make docker-down`, the way scripts/mlflow-server.sh runs MLflow.
#
#   deploy/scripts/docker-engine.sh up | down | status | host
#
#   up      when an engine already answers (the machine's own, or ours), do nothing; otherwise
#           install Debian's docker.io if absent and start dockerd in the background
#   down    stop the dockerd that `up` started, by the PID it kept (never any other engine)
#   status  which engine answers, if any
#   host    print the DOCKER_HOST to use ('' for the machine's own engine); exit 1 if none answers
#
# The daemon keeps its data under DOCKER_DIR (default .run/docker, git-ignored): images,
# containers, its socket, PID and log. Its runtime state (containerd's sockets, whose paths must
# stay short whatever the checkout's path) goes to /run/heartml-docker-<hash of DOCKER_DIR>.
# Network rule of these machines: no bridge, no iptables, no IP forwarding, so a container can
# only share the host's network (`--network host`) and servers bind 127.0.0.1; nothing gets a
# private-range address.
set -euo pipefail

DOCKER_DIR=$(realpath -m "${DOCKER_DIR:-.run/docker}")
SOCK="$DOCKER_DIR/docker.sock"
PID_FILE="$DOCKER_DIR/dockerd.pid"
LOG="$DOCKER_DIR/dockerd.log"
OWN_HOST="unix://$SOCK"
RUNTIME_BASE=/run
[[ -d $RUNTIME_BASE && -w $RUNTIME_BASE ]] || RUNTIME_BASE=${TMPDIR:-/tmp}
EXEC_ROOT="$RUNTIME_BASE/heartml-docker-$(printf '%s' "$DOCKER_DIR" | sha256sum | cut -c1-12)"
START_TIMEOUT_S=${DOCKER_START_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${DOCKER_STOP_TIMEOUT_S:-30}
HERE=$(dirname "$0")

say() { printf '%s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

own_pid() { [[ -f $PID_FILE ]] && cat "$PID_FILE"; }
own_running() {
    local pid
    pid=$(own_pid) || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}
answers() { timeout 10 docker "$@" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
own_answers() { own_running && answers -H "$OWN_HOST"; }

# An engine that is not ours: whatever DOCKER_HOST named before the Makefile pointed it at ours,
# or the default socket.
other_answers() {
    if [[ ${DOCKER_HOST:-} == "$OWN_HOST" ]]; then
        (unset DOCKER_HOST && answers)
    else
        answers
    fi
}

# dockerd leaves its bind mount of the host's network namespace (exec/netns/default) behind, and
# overlay mounts under data/ when it was killed: a checkout holding them cannot be deleted.
unmount_leftovers() {
    local mount
    awk -v data="$DOCKER_DIR/" -v exec="$EXEC_ROOT/" \
        'index($2, data) == 1 || index($2, exec) == 1 { print $2 }' /proc/mounts | sort -r |
        while IFS= read -r mount; do
            umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
        done
}

cmd_up() {
    if own_answers; then
        say "dockerd already running (pid $(own_pid)); use it with: export DOCKER_HOST=$OWN_HOST"
        return
    fi
    if other_answers; then
        say "a Docker engine already answers; nothing to start"
        return
    fi
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        bash "$HERE/apt-install.sh" docker.io
    fi
    command -v dockerd >/dev/null || die "dockerd is not installed and could not be"
    [[ $(id -u) -eq 0 ]] || die "starting dockerd needs root (or start your own Docker engine)"
    # The socket path must fit a sockaddr_un (108 bytes).
    ((${#SOCK} < 100)) || die "DOCKER_DIR path too long for the daemon's socket: $DOCKER_DIR"

    unmount_leftovers
    mkdir -p "$DOCKER_DIR/data" "$EXEC_ROOT"
    rm -f "$SOCK" "$PID_FILE"
    setsid dockerd \
        --host "$OWN_HOST" \
        --data-root "$DOCKER_DIR/data" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PID_FILE" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false \
        >"$LOG" 2>&1 </dev/null &
    local pid=$! waited=0
    while ! answers -H "$OWN_HOST"; do
        kill -0 "$pid" 2>/dev/null ||
            die "dockerd exited: $(grep -m1 -iE 'level=(fatal|error)' "$LOG" || tail -n 1 "$LOG")"
        ((waited++ < START_TIMEOUT_S * 4)) || {
            kill -TERM "$pid" 2>/dev/null || true
            die "dockerd did not answer within ${START_TIMEOUT_S} s (see $LOG)"
        }
        sleep 0.25
    done
    echo "$pid" >"$PID_FILE"
    say "dockerd started (pid $pid, data in $DOCKER_DIR); use it with: export DOCKER_HOST=$OWN_HOST"
}

cmd_down() {
    if ! own_running; then
        rm -f "$PID_FILE"
        unmount_leftovers
        say "no dockerd of ours is running"
        return
    fi
    local pid
    pid=$(own_pid)
    # Containers of ours that are still there would keep the daemon busy: remove them first.
    local leftovers
    leftovers=$(timeout 20 docker -H "$OWN_HOST" ps -aq 2>/dev/null || true)
    if [[ -n $leftovers ]]; then
        # shellcheck disable=SC2086  # one id per word
        timeout 60 docker -H "$OWN_HOST" rm -f $leftovers >/dev/null 2>&1 || true
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 $((STOP_TIMEOUT_S * 4))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        say "dockerd (pid $pid) did not stop within ${STOP_TIMEOUT_S} s: killed"
    else
        say "dockerd (pid $pid) stopped"
    fi
    rm -f "$PID_FILE" "$SOCK"
    unmount_leftovers
    rm -rf "$EXEC_ROOT"
}

cmd_status() {
    if own_answers; then
        say "dockerd: ours, running (pid $(own_pid)), DOCKER_HOST=$OWN_HOST"
    elif other_answers; then
        say "Docker engine: the machine's own (${DOCKER_HOST:-default socket})"
    else
        say "Docker engine: none answers"
        return 1
    fi
}

cmd_host() {
    if own_answers; then
        say "$OWN_HOST"
    elif other_answers; then
        if [[ ${DOCKER_HOST:-} == "$OWN_HOST" ]]; then say ""; else say "${DOCKER_HOST:-}"; fi
    else
        return 1
    fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    host) cmd_host ;;
    *) die "usage: $0 up|down|status|host" ;;
esac
