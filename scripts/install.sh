#!/bin/sh
# Install rprocd into $DESTDIR: the Python package and its commands, and every
# file systemd, journald, udev, D-Bus and polkit read, each where they read it.
# `make install DESTDIR=...` runs this; the Debian package (packaging/debian)
# and the Yocto recipe (packaging/yocto) run it with --no-python after their
# own Python build, so all three lay out the same files.
#
# Usage: scripts/install.sh [--destdir DIR] [--no-python] [--no-st-compat]
# Every location is a variable (environment or VAR=value argument), because
# distributions disagree on a few: Debian 12 keeps units in /lib/systemd/system
# and udev rules in /lib/udev/rules.d, merged-/usr systems use /usr/lib/...
#
#   DESTDIR       staging root (default: empty = the live system)
#   PREFIX        /usr
#   BINDIR        $PREFIX/bin          rprocd, rprocctl (entry points)
#   LIBEXECDIR    $PREFIX/libexec      rprocd/rprocd-poweroff
#   DATADIR       $PREFIX/share        dbus-1/, polkit-1/, man/, bash-completion/
#   SYSCONFDIR    /etc                 rprocd/rprocd.conf, rprocd/rprocd.conf.d/
#   UNITDIR       pkg-config systemd systemdsystemunitdir, else $PREFIX/lib/systemd/system
#   PRESETDIR     $PREFIX/lib/systemd/system-preset
#   CATALOGDIR    $PREFIX/lib/systemd/catalog   (journalctl reads only /usr[/local]/lib)
#   UDEVRULESDIR  pkg-config udev udevdir + /rules.d, else $PREFIX/lib/udev/rules.d
#   FIRMWAREDIR   /lib/firmware        rprocd/ is the import directory
#   ST_SBINDIR    /sbin                ST's shim paths, which units and scripts name
#   PYTHON        /usr/bin/python3 if present, else python3 (the interpreter the
#                 commands' #! names)
#
# The Python part uses pip offline (--no-index --no-build-isolation: needs
# setuptools >= 61 and wheel for $PYTHON) and builds in a temporary copy, so the
# source tree stays clean.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
python_part=yes
st_compat=yes
while [ $# -gt 0 ]; do
    case $1 in
        --destdir) DESTDIR=$2; shift ;;
        --destdir=*) DESTDIR=${1#*=} ;;
        --no-python) python_part=no ;;
        --no-st-compat) st_compat=no ;;
        [A-Z]*=*) export "${1?}" ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

pkgvar() {  # pkgvar MODULE VARIABLE: a pkg-config variable, or nothing
    pkg-config --variable="$2" "$1" 2>/dev/null || true
}

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBEXECDIR=${LIBEXECDIR:-$PREFIX/libexec}
DATADIR=${DATADIR:-$PREFIX/share}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$(pkgvar systemd systemdsystemunitdir)}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
PRESETDIR=${PRESETDIR:-$PREFIX/lib/systemd/system-preset}
CATALOGDIR=${CATALOGDIR:-$PREFIX/lib/systemd/catalog}
udevdir=$(pkgvar udev udevdir)
UDEVRULESDIR=${UDEVRULESDIR:-${udevdir:-$PREFIX/lib/udev}/rules.d}
FIRMWAREDIR=${FIRMWAREDIR:-/lib/firmware}
ST_SBINDIR=${ST_SBINDIR:-/sbin}
MANDIR=${MANDIR:-$DATADIR/man}
DOCDIR=${DOCDIR:-$DATADIR/doc/rprocd}
COMPLETIONDIR=${COMPLETIONDIR:-$(pkgvar bash-completion completionsdir)}
COMPLETIONDIR=${COMPLETIONDIR:-$DATADIR/bash-completion/completions}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi

cd "$here"
d=$DESTDIR

# put MODE SRC DEST: install one file, creating its directory.
put() {
    install -D -m "$1" "$2" "$d$3"
}

# unit SRC DESTNAME: a unit file, with the commands' paths rewritten when this
# layout differs from the one written in the file (/usr/bin, /usr/libexec, /sbin).
unit() {
    mkdir -p "$d$UNITDIR"
    sed -e "s|/usr/bin/rprocd|$BINDIR/rprocd|g" \
        -e "s|/usr/libexec/rprocd/|$LIBEXECDIR/rprocd/|g" \
        -e "s|/sbin/st-|$ST_SBINDIR/st-|g" \
        "$1" > "$d$UNITDIR/$2"
    chmod 644 "$d$UNITDIR/$2"
}

# -- the Python package and its commands (rprocd, rprocctl, rprocd-sim) -------
if [ "$python_part" = yes ]; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cp -R pyproject.toml README.md rprocd "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    # deb_system: on Debian's python, PREFIX=/usr means /usr/lib/python3/dist-packages
    # and /usr/bin (its default for /usr would be /usr/local/...). Ignored elsewhere.
    layout=
    [ "$PREFIX" = /usr ] && layout=deb_system
    (cd "$build" && DEB_PYTHON_INSTALL_LAYOUT=$layout PIP_NO_CACHE_DIR=1 \
        "$PYTHON" -m pip install --quiet --no-deps --no-index --no-build-isolation \
        --disable-pip-version-check --no-warn-script-location --ignore-installed \
        --root "${d:-/}" --prefix "$PREFIX" . \
        2>&1 | grep -v "^WARNING: Running pip as the 'root' user" >&2 || true)
    [ -x "$d$BINDIR/rprocd" ] || { echo "install.sh: pip did not install $BINDIR/rprocd" >&2; exit 1; }
fi

# -- systemd -------------------------------------------------------------------
unit systemd/rprocd.service rprocd.service
unit systemd/rprocd-poweroff.service rprocd-poweroff.service
# Static wants: the poweroff stop is part of the package's behaviour, not an
# option to enable (mask it to turn it off), and it must never be in reboot.target.
for target in halt.target poweroff.target; do
    mkdir -p "$d$UNITDIR/$target.wants"
    ln -sfn ../rprocd-poweroff.service "$d$UNITDIR/$target.wants/rprocd-poweroff.service"
done
put 755 systemd/rprocd-poweroff "$LIBEXECDIR/rprocd/rprocd-poweroff"
put 644 systemd/rprocd.catalog "$CATALOGDIR/rprocd.catalog"

# -- udev: start the daemon when a remoteproc device appears -------------------
put 644 etc/udev/rules.d/60-rprocd.rules "$UDEVRULESDIR/60-rprocd.rules"

# -- D-Bus and polkit ----------------------------------------------------------
put 644 dbus/org.rprocd1.conf "$DATADIR/dbus-1/system.d/org.rprocd1.conf"
put 644 dbus/org.rprocd1.service "$DATADIR/dbus-1/system-services/org.rprocd1.service"
for xml in dbus/org.rprocd1.*.xml; do
    put 644 "$xml" "$DATADIR/dbus-1/interfaces/${xml#dbus/}"
done
put 644 dbus/org.rprocd1.policy "$DATADIR/polkit-1/actions/org.rprocd1.policy"
put 644 dbus/50-rprocd-group.rules.example "$DOCDIR/examples/50-rprocd-group.rules"

# -- configuration: the commented default file and an empty drop-in directory --
put 644 etc/rprocd/rprocd.conf "$SYSCONFDIR/rprocd/rprocd.conf"
mkdir -p "$d$SYSCONFDIR/rprocd/rprocd.conf.d"
# ImportFirmware() target: inside the kernel's search path, so the kernel loads
# imported images by the name "rprocd/...".
mkdir -p "$d$FIRMWAREDIR/rprocd"

# -- documentation and shell completion ----------------------------------------
for page in man/*.[1-8]; do
    put 644 "$page" "$MANDIR/man${page##*.}/${page#man/}"
done
put 644 completion/rprocctl.bash "$COMPLETIONDIR/rprocctl"

# -- ST compatibility: st-m4/st-m33firmware-load units, /sbin shims, drop-in ----
if [ "$st_compat" = yes ]; then
    unit systemd/st-m4firmware-load.service st-m4firmware-load.service
    unit systemd/st-m33firmware-load.service st-m33firmware-load.service
    # One script serves both names (it reads the core from its own name).
    put 755 shims/st-m4firmware-load-default.sh "$ST_SBINDIR/st-m4firmware-load-default.sh"
    put 755 shims/st-m4firmware-load-default.sh "$ST_SBINDIR/st-m33firmware-load-default.sh"
    put 644 shims/50-st-compat.conf "$SYSCONFDIR/rprocd/rprocd.conf.d/50-st-compat.conf"
    # Distributions that apply presets enable them as ST shipped them enabled.
    put 644 systemd/90-rprocd-st-compat.preset "$PRESETDIR/90-rprocd-st-compat.preset"
fi

if [ -z "$d" ]; then
    echo "install.sh: installed. Next: systemctl daemon-reload; journalctl --update-catalog;" \
        "udevadm control --reload; systemctl reload dbus" >&2
fi
