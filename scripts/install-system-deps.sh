#!/usr/bin/env bash
# Install the Debian packages that benchmarks and interoperability tests compare against
# (dcmtk, Orthanc with its DICOMweb plugin, Chromium and ChromeDriver). Idempotent; needs root (as on CI) or sudo.
set -euo pipefail
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(dcmtk)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
