#!/usr/bin/env bash
# Download (only) the Debian packages of CI's later sessions into apt's cache: Chromium
# (tests_browser), nginx and Caddy (tests_proxy), PostgreSQL (tests_postgres, tests_slurm)
# and a one-host Slurm cluster's (.ci/install_slurm.sh). .ci/run starts this in the
# background while the first sessions run; each session then installs its packages from
# the cache. Nothing is installed here: a test running meanwhile never meets a package
# half unpacked (the proxy tests of `tests` run wherever nginx is). Only as root, where
# apt-get is; a failure here costs time, never a test.
set -euo pipefail
# as the sessions install them: the first with what they recommend, Slurm's without
PACKAGES=(chromium nginx caddy postgresql)
SLURM=(slurm-wlm slurmrestd slurm-wlm-jwt-plugin munge)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "download_packages: not root, or no apt-get: each session downloads its own"
    exit 0
fi
missing() {  # the named packages that are not installed
    local package
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || echo "$package"
    done
}
mapfile -t packages < <(missing "${PACKAGES[@]}")
mapfile -t slurm < <(missing "${SLURM[@]}")
if [ ${#packages[@]} -eq 0 ] && [ ${#slurm[@]} -eq 0 ]; then
    echo "download_packages: all installed already"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#packages[@]} -gt 0 ]; then
    apt-get install -y -qq --download-only "${packages[@]}"
fi
if [ ${#slurm[@]} -gt 0 ]; then
    apt-get install -y -qq --download-only --no-install-recommends "${slurm[@]}"
fi
echo "download_packages: downloaded ${packages[*]} ${slurm[*]}"
