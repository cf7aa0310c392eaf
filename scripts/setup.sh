#!/bin/sh
# One-command setup for a fresh Debian 12 machine (run as root): the Debian
# packages, a venv with pinned Python packages, and the test firmware.
# Idempotent and quick when everything is already in place.
set -eu
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
APT_PACKAGES="make pkg-config libsystemd-dev libgirepository1.0-dev libcairo2-dev
libdbus-1-dev umockdev gir1.2-umockdev-1.0 fuse3 gcc-arm-none-eabi
dbus-daemon systemd
debhelper dh-python pybuild-plugin-pyproject python3-pip python3-setuptools
python3-wheel dpkg-dev groff-base man-db"

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

stamp="$VENV/.setup-stamp"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "setup: preparing the venv in $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -c constraints.txt -e ".[test,sim]"
    touch "$stamp"
fi

make -s -C tests/firmware
