#!/usr/bin/env bash
# Ensures Debian's `prometheus` package is installed and prints the server binary's path.
# The tests start the binary themselves (random port, temp config and storage); nothing here depends on
# the packaged service being started, and in a container without systemd it is not.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

find_bin() {
    if [[ -x /usr/bin/prometheus ]]; then echo /usr/bin/prometheus; return 0; fi
    command -v prometheus 2>/dev/null && return 0
    return 1
}

if ! BIN="$(find_bin)"; then
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo -n"; fi
    # policy-rc.d keeps invoke-rc.d from starting the packaged service where an init system exists.
    if [[ ! -e /usr/sbin/policy-rc.d && "$(id -u)" == 0 ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    install() { $SUDO apt-get install -y -q --no-install-recommends prometheus >&2; }
    if ! install; then
        $SUDO apt-get update -q >&2
        install
    fi
    BIN="$(find_bin)"
fi
echo "$BIN"
