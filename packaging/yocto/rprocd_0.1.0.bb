# Yocto/OpenEmbedded recipe of rprocd (scarthgap and later).
#
# The Python part is built as a wheel from pyproject.toml (setuptools backend)
# by python_setuptools_build_meta; everything systemd, journald, udev, D-Bus
# and polkit read is installed by the project's own scripts/install.sh, the
# same script as `make install` and the Debian package, so the three cannot
# drift apart.
#
# Packages:
#   rprocd            the daemon, rprocctl, units, udev rule, bus/polkit files,
#                     catalog, man pages, completion, default configuration
#   rprocd-st-compat  st-m4firmware-load.service, st-m33firmware-load.service,
#                     /sbin/st-m*firmware-load-default.sh shims, and a drop-in
#                     letting those units decide whether m4/m33 start at boot;
#                     replaces ST's packages that shipped them (RPROCD_ST_PACKAGES)
#   rprocd-sim        the emulated board (development hosts, not boards)
#
# To build from a local checkout instead of the git source:
#   INHERIT += "externalsrc"
#   EXTERNALSRC:pn-rprocd = "/path/to/rprocd"

SUMMARY = "System daemon for Linux remote processors (remoteproc)"
DESCRIPTION = "rprocd owns every remote processor (Cortex-M cores of STM32MP1/MP2, \
i.MX, TI and Xilinx SoCs, DSPs): it finds them through udev by name, starts, stops, \
switches and recovers their firmware, validates images before the kernel sees them, \
supervises crashes, keeps coredumps and trace logs, and serves it all on the system \
D-Bus (org.rprocd1) with polkit authorization."
SECTION = "base"
LICENSE = "LGPL-2.1-or-later"
# pyproject.toml declares the license by name; the source carries no license text.
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/LGPL-2.1-or-later;md5=2a4f4fd2128ea2f65047ee63fbca9f68"

# Where the source comes from: override in a bbappend or local.conf, and pin
# SRCREV to the release commit for a reproducible image.
RPROCD_SRC_URI ?= "git://git.example.invalid/rprocd.git;protocol=https;branch=main"
SRC_URI = "${RPROCD_SRC_URI}"
SRCREV ?= "${AUTOREV}"
S = "${WORKDIR}/git"

inherit python_setuptools_build_meta systemd

PACKAGES =+ "${PN}-st-compat ${PN}-sim"

# --- systemd ------------------------------------------------------------------
SYSTEMD_PACKAGES = "${PN} ${PN}-st-compat"
# rprocd.service has no [Install] section: udev starts it when a remoteproc
# device appears (60-rprocd.rules), D-Bus activation when a client calls, so a
# board without a coprocessor never runs it; nothing to enable.
# rprocd-poweroff.service is statically wanted by halt.target and poweroff.target.
SYSTEMD_SERVICE:${PN} = "rprocd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "disable"
# ST's units are enabled, so m4/m33 firmware starts at boot; `systemctl disable`
# on the board (or SYSTEMD_AUTO_ENABLE:rprocd-st-compat = "disable") stops that.
SYSTEMD_SERVICE:${PN}-st-compat = "st-m4firmware-load.service st-m33firmware-load.service"
SYSTEMD_AUTO_ENABLE:${PN}-st-compat = "enable"

do_install:append() {
    sh ${S}/scripts/install.sh --no-python --destdir ${D} \
        PREFIX=${prefix} \
        BINDIR=${bindir} \
        LIBEXECDIR=${libexecdir} \
        DATADIR=${datadir} \
        SYSCONFDIR=${sysconfdir} \
        MANDIR=${mandir} \
        DOCDIR=${docdir}/${BPN} \
        UNITDIR=${systemd_system_unitdir} \
        PRESETDIR=${systemd_unitdir}/system-preset \
        CATALOGDIR=${nonarch_libdir}/systemd/catalog \
        UDEVRULESDIR=${nonarch_base_libdir}/udev/rules.d \
        FIRMWAREDIR=${nonarch_base_libdir}/firmware \
        ST_SBINDIR=${base_sbindir} \
        COMPLETIONDIR=${datadir}/bash-completion/completions
}

# --- package contents (the first package whose FILES match gets a file) ---------
FILES:${PN}-st-compat = " \
    ${systemd_system_unitdir}/st-m4firmware-load.service \
    ${systemd_system_unitdir}/st-m33firmware-load.service \
    ${base_sbindir}/st-m4firmware-load-default.sh \
    ${base_sbindir}/st-m33firmware-load-default.sh \
    ${sysconfdir}/rprocd/rprocd.conf.d/50-st-compat.conf \
    ${systemd_unitdir}/system-preset/90-rprocd-st-compat.preset \
"
FILES:${PN}-sim = "${bindir}/rprocd-sim ${PYTHON_SITEPACKAGES_DIR}/rprocd/sim"
FILES:${PN} += " \
    ${systemd_system_unitdir} \
    ${libexecdir}/rprocd \
    ${nonarch_libdir}/systemd/catalog \
    ${nonarch_base_libdir}/udev/rules.d \
    ${nonarch_base_libdir}/firmware/rprocd \
    ${datadir}/dbus-1 \
    ${datadir}/polkit-1 \
    ${datadir}/bash-completion \
    ${sysconfdir}/rprocd \
"
CONFFILES:${PN} = "${sysconfdir}/rprocd/rprocd.conf"
CONFFILES:${PN}-st-compat = "${sysconfdir}/rprocd/rprocd.conf.d/50-st-compat.conf"

# --- runtime dependencies -------------------------------------------------------
# The bindings (oe-core / meta-python) and the standard library modules the
# daemon and rprocctl import (argparse, pwd, grp, socket... are in python3-core);
# base-utils (busybox by default) gives /bin/sh and cat to rprocd-poweroff.
RDEPENDS:${PN} = " \
    python3-core \
    python3-pydbus \
    python3-pygobject \
    python3-pyudev \
    python3-systemd \
    python3-pyelftools \
    python3-json \
    python3-logging \
    python3-difflib \
    python3-datetime \
    python3-crypt \
    python3-threading \
    dbus \
    ${VIRTUAL-RUNTIME_base-utils} \
"
# Without polkitd only root and AllowGroup= members may change cores.
RRECOMMENDS:${PN} = "polkit"
# The shims are /bin/sh scripts, like rprocd-poweroff.
RDEPENDS:${PN}-st-compat = "${PN} ${VIRTUAL-RUNTIME_base-utils}"
# mfusepy and python-dbusmock are not in meta-python; add them from a layer
# of your own to use the emulator on a target.
RDEPENDS:${PN}-sim = "${PN} umockdev fuse3"

# --- taking over from ST's packages ---------------------------------------------
# The ST packages that ship st-m4firmware-load.service / st-m33firmware-load.service
# and /sbin/st-m*firmware-load-default.sh (meta-st-stm32mp: the recipes building the
# Cortex-M examples; their -userfs packages with the example firmware are not
# affected). rprocd-st-compat ships the same paths, so it replaces and conflicts
# with them, and provides their names for images that ask for them.
# Set RPROCD_ST_PACKAGES = "" (local.conf or a bbappend) to declare nothing.
RPROCD_ST_PACKAGES ?= "m4projects-stm32mp1 m33projects-stm32mp2"
RPROVIDES:${PN}-st-compat = "${RPROCD_ST_PACKAGES}"
RREPLACES:${PN}-st-compat = "${RPROCD_ST_PACKAGES}"
RCONFLICTS:${PN}-st-compat = "${RPROCD_ST_PACKAGES}"
