#!/usr/bin/env bash
# `make base-image`: make sure the Dockerfiles' base, python:3.11-slim, is in the engine.
#
# Present already → nothing to do. Otherwise it is pulled; where no image registry can be
# reached (this team's build machines), a stand-in is built from Debian's own packages instead:
# debootstrap of bookworm (its Python is 3.11, the base's minor version) with python3, venv, pip
# and CA certificates, `python` linked to `python3`, pip allowed to install into a virtualenv's
# system-wide Python (no EXTERNALLY-MANAGED marker), and this machine's CA bundle, through which
# pip inside a build reaches the package index. The stand-in's root filesystem is cached outside
# the checkout (CI works in a fresh clone each time), so it is built once per machine.
# The Dockerfiles do not change: they say `FROM python:3.11-slim` either way.
#
#   deploy/scripts/base-image.sh            one line saying what the base is
#   deploy/scripts/base-image.sh --is-stand-in   exit 0 if the local base is the stand-in
#
# Environment: BASE_IMAGE (python:3.11-slim), HEARTML_CACHE_DIR (~/.cache/heartml),
# DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
CACHE_DIR=${HEARTML_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/heartml}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
HOST_CA=/etc/ssl/certs/ca-certificates.crt
STAND_IN_LABEL=io.heartml.stand-in
# Bump when the fix-ups below change: it is part of the cache key.
RECIPE=1
HERE=$(dirname "$0")

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

stand_in_of() {
    docker image inspect -f "{{ index .Config.Labels \"$STAND_IN_LABEL\" }}" "$1" 2>/dev/null
}

if [[ ${1:-} == --is-stand-in ]]; then
    [[ -n $(stand_in_of "$BASE_IMAGE") ]]
    exit
fi

timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers: start one with \`make docker-up\` (or your own)"

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    from=$(stand_in_of "$BASE_IMAGE")
    echo "base image $BASE_IMAGE: present${from:+ (stand-in: $from)}"
    exit 0
fi

if pull_error=$(timeout 300 docker pull -q "$BASE_IMAGE" 2>&1 >/dev/null); then
    echo "base image $BASE_IMAGE: pulled"
    exit 0
fi

# The cache key covers everything the root filesystem is made from.
key=$(printf '%s\n' "$BASE_IMAGE" "$SUITE" "$PACKAGES" "$(sha256sum <"$HOST_CA")" "$RECIPE" |
    sha256sum | cut -c1-16)
tarball="$CACHE_DIR/base/stand-in-$SUITE-$key.tar"
origin="debootstrap $SUITE, cached in $tarball"

if [[ ! -f $tarball ]]; then
    origin="debootstrap $SUITE ($MIRROR), built now and cached in $tarball"
    bash "$HERE/apt-install.sh" debootstrap
    [[ $(id -u) -eq 0 ]] || die "building the stand-in base needs root (debootstrap)"
    mkdir -p "$(dirname "$tarball")"
    rootfs=$(mktemp -d "$CACHE_DIR/base/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.part"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
        >"$rootfs.log" 2>&1 || {
        tail -n 5 "$rootfs.log" >&2
        die "debootstrap failed (log: $rootfs.log)"
    }
    rm -f "$rootfs.log"
    ln -sf python3 "$rootfs/usr/bin/python"
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    # What a slim image leaves out too: package caches, lists, documentation.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
fi

docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $STAND_IN_LABEL=\"debian-$SUITE\"" \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
echo "base image $BASE_IMAGE: stand-in from $origin (cannot pull: ${pull_error##*: })"
