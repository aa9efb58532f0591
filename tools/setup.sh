#!/usr/bin/env bash
# Set up ppchat in ./.venv on a fresh Linux or macOS machine.
#   bash tools/setup.sh          # the app
#   bash tools/setup.sh test     # the app + test dependencies + the virtual audio device's packages
# On Debian/Ubuntu it installs the system libraries sounddevice/soundfile need (PortAudio,
# libsndfile) with apt-get (through sudo when not root). On macOS the wheels bundle them.
# It prints a line per stage; pip's own output goes to a log that is shown only if pip fails.
# PPCHAT_VENV chooses another virtual environment folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-app}
venv=${PPCHAT_VENV:-.venv}
say() { echo "ppchat setup: $*"; }

apt_packages="libportaudio2 libsndfile1"
[ "$want" = test ] && apt_packages="$apt_packages pulseaudio pulseaudio-utils"

if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $apt_packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing system packages:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
log=$(mktemp "${TMPDIR:-/tmp}/ppchat-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
extra=""
[ "$want" = test ] && extra="[test]"
say "installing ppchat$extra and its dependencies into $venv (a few minutes the first time)"
"$venv/bin/python" -m pip install -q --upgrade pip >>"$log" 2>&1 || true
if ! "$venv/bin/python" -m pip install -q -e ".$extra" >>"$log" 2>&1; then
  say "pip failed; the end of its output:"
  tail -n 40 "$log" >&2
  exit 1
fi
"$venv/bin/python" -c "import ppchat" && say "ready ($venv/bin/ppchat)"
