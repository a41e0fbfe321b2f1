#!/usr/bin/env bash
# Install the Debian packages of a one-host Slurm cluster (munge, slurmctld, slurmd, slurmrestd).
# Idempotent: a machine that has them already skips the download.
set -euo pipefail
PACKAGES=(slurm-wlm slurmrestd slurm-wlm-jwt-plugin munge)
if dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
