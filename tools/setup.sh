#!/usr/bin/env bash
# Set up ppchat in ./.venv on a fresh Linux or macOS machine.
#   bash tools/setup.sh          # the app
#   bash tools/setup.sh test     # the app + test dependencies + the virtual audio device's packages
# On Debian/Ubuntu it installs the system libraries sounddevice/soundfile need (PortAudio,
# libsndfile) with apt-get (through sudo when not root). On macOS the wheels bundle them.
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-app}

apt_packages="libportaudio2 libsndfile1"
[ "$want" = test ] && apt_packages="$apt_packages pulseaudio pulseaudio-utils"

if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $apt_packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "ppchat setup: installing system packages:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
extra=""
[ "$want" = test ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".$extra" 2>&1 | grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true
.venv/bin/python -c "import ppchat" && echo "ppchat setup: ready (.venv/bin/ppchat)"
