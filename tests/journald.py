"""A real systemd-journald for one test, in its own user, mount and network namespaces.

`START` is the head of a shell script run under
`unshare --user --map-root-user --mount --net`: it gives journald private
/run/systemd, /run/log/journal (bound to $JDIR) and /etc/systemd, starts
"$JOURNALD" and waits for its socket, leaving `$jpid`. Each test appends
what it runs against that journal.
"""

import os

JOURNALD = next((p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
                 if os.access(p, os.X_OK)), None)

START = r"""
set -eu
mount --make-rprivate /
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
mkdir -p /run/log/journal
mount --bind "$JDIR" /run/log/journal
mount -t tmpfs tmpfs /etc/systemd
cat > /etc/systemd/journald.conf <<EOF
[Journal]
Storage=volatile
RateLimitBurst=0
ForwardToSyslog=no
ForwardToWall=no
MaxLevelStore=debug
EOF

"$JOURNALD" > "$OUT/journald.log" 2>&1 &
jpid=$!
i=0
while [ ! -S /run/systemd/journal/socket ]; do
    i=$((i + 1))
    [ "$i" -lt 400 ] || { echo "journald did not open its socket" >&2; exit 90; }
    sleep 0.05
done
"""
