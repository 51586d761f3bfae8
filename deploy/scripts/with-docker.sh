#!/usr/bin/env bash
# Run a command (make test's pytest) with a Docker engine for the container tests.
#
#   deploy/scripts/with-docker.sh COMMAND...
#
# When no engine answers, Debian's docker.io and debootstrap (for the stand-in base image) are
# installed if absent, and `docker-engine.sh up` starts a dockerd with no bridge;
# the dockerd started here is stopped again by its PID when the command ends, fails or is
# interrupted. An engine that was already there is left alone. Where no engine can be had
# (packages not installable, not root), the command still runs, and the container tests fail
# with the reason, which is also printed here (HEARTML_DOCKER_UNAVAILABLE).
set -euo pipefail

HERE=$(dirname "$0")
ENGINE="$HERE/docker-engine.sh"
started=""

trap '[[ -z $started ]] || bash "$ENGINE" down || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! bash "$ENGINE" host >/dev/null 2>&1; then
    # debootstrap too: with no engine here, there is no registry either, most likely, and the
    # base image will be the stand-in.
    if output=$(bash "$HERE/apt-install.sh" docker.io debootstrap 2>&1 && bash "$ENGINE" up 2>&1); then
        started=1
        printf '%s\n' "$output"
    else
        reason=$(printf '%s\n' "$output" | tail -n 1)
        reason=${reason#error: }
        export HEARTML_DOCKER_UNAVAILABLE="$reason"
        echo "no Docker engine for the container tests: $reason"
    fi
fi

status=0
"$@" || status=$?
exit "$status"
