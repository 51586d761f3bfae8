#!/usr/bin/env bash
# Install Debian packages that are missing, for the make targets that need system tools
# (docker.io, debootstrap). Other people may run apt on the same machine at the same time, so a
# held dpkg or apt lock is waited for and retried, not treated as a failure.
#
#   deploy/scripts/apt-install.sh PACKAGE...
#
# Exit 0 when every package is installed (already, or now); 1 with one line on stderr when they
# cannot be (not root, no apt-get, or apt failed for another reason than a lock).
set -euo pipefail

LOCK_WAIT_S=${APT_LOCK_WAIT_S:-300}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

missing=()
for package in "$@"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

command -v apt-get >/dev/null || die "cannot install ${missing[*]}: no apt-get on this machine"
[[ $(id -u) -eq 0 ]] || die "cannot install ${missing[*]}: installing Debian packages needs root"

# apt-get waits up to LOCK_WAIT_S for the dpkg lock itself; the loop covers the locks it does
# not wait for (the package lists during `update`).
apt_retrying() {
    local deadline=$((SECONDS + LOCK_WAIT_S)) log
    log=$(mktemp)
    while true; do
        if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT_S" -qq "$@" >"$log" 2>&1; then
            rm -f "$log"
            return 0
        fi
        if grep -qiE 'could not get lock|unable to acquire|is another process using it' "$log" &&
            ((SECONDS < deadline)); then
            sleep 5
            continue
        fi
        sed -n '$p' "$log" >&2
        rm -f "$log"
        return 1
    done
}

echo "installing ${missing[*]} from Debian's packages…"
# A package's service must not start on its own: Debian's docker.io would start a daemon with
# the default bridge network. Where the machine has no policy denying that, one is put in place
# for this install only.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
if ! apt_retrying install -y --no-install-recommends "${missing[@]}"; then
    apt_retrying update || die "apt-get update failed"
    apt_retrying install -y --no-install-recommends "${missing[@]}" ||
        die "apt-get could not install ${missing[*]}"
fi
