#!/usr/bin/env bash
# Debian packages s5video needs. Idempotent: installs only what is missing; needs root (or sudo).
#   ffmpeg  - transcoding in tools/make_shards.py, reference decodes in tests and benchmarks
#   pkg-config libturbojpeg0-dev libopencv-dev - to build ffcv 1.0.2 (frozen-feature cache)
#   slurm-wlm slurm-client munge - the two-node Slurm cluster the launcher tests start (tests/slurm_cluster.py)
#   nginx - the HTTP shard server the streaming tests start (tests/test_http.py)
#   chromium chromium-driver - the headless browser the web page test drives with selenium (tests/test_app.py)
set -euo pipefail
PKGS=(ffmpeg pkg-config libturbojpeg0-dev libopencv-dev slurm-wlm slurm-client munge nginx chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# no service is started at install time (the tests start nginx, slurmd, munged themselves, on their own ports)
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
