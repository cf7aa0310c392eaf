#!/bin/sh
# ST's firmware load script, kept as a thin shim over rprocd.
#
# ST's st-m4firmware-load.service / st-m33firmware-load.service ran
# /sbin/st-<core>firmware-load-default.sh start|stop|restart, and units and
# scripts out there still call it. rprocd owns the cores now: this only forwards
# the verb to rprocctl for the core named in the script's own file name
# (st-m4... drives the core whose kernel name is "m4", st-m33... the core
# "m33"; by name, never by remoteprocN). st-m33firmware-load-default.sh is
# the same file, so both shims behave alike.
#
#   start    the core runs its configured firmware afterwards; a core already
#            running or attached is left alone (ST's script restarted it;
#            use restart for that)
#   stop     the core is offline afterwards; an offline core is left alone
#   restart  stop, then start the configured firmware (start if not running)
#
# Exit status: rprocctl's (0 ok, 1 failed, 2 usage, 3 no such processor,
# 4 access denied, 5 daemon not running, 6 timeout); 0 when nothing had to be
# done. The firmware, its search path and the board's signed-image format are
# rprocd.conf's business (Firmware=, FirmwareDirectories=), not this script's.
set -u

prog=${0##*/}
case $prog in
    st-?*firmware-load-default.sh)
        core=${prog#st-}
        core=${core%firmware-load-default.sh} ;;
    *)
        echo "$prog: cannot tell the core from this file name (st-<core>firmware-load-default.sh)" >&2
        exit 2 ;;
esac

# The core's state, read-only from sysfs: it only decides whether there is
# anything to do. Every change goes through the daemon.
state=
for dev in "${RPROCD_SYSFS:-/sys}"/class/remoteproc/*; do
    if [ "$(cat "$dev/name" 2>/dev/null)" = "$core" ]; then
        state=$(cat "$dev/state" 2>/dev/null)
        break
    fi
done

case ${1-} in
    start)
        case $state in running|attached) exit 0 ;; esac
        exec rprocctl start "$core" ;;
    stop)
        [ "$state" = offline ] && exit 0
        exec rprocctl stop "$core" ;;
    restart)
        case $state in
            running|attached) exec rprocctl restart "$core" ;;
            *) exec rprocctl start "$core" ;;
        esac ;;
    *)
        echo "usage: $prog start|stop|restart" >&2
        exit 2 ;;
esac
