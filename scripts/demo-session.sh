#!/bin/sh
# A user's session against the emulated boards (run inside rprocd-sim).
set -u
PATH="$(pwd)/.venv/bin:$PATH"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
say() { printf '\n\033[36m# %s\033[0m\n' "$*"; }

say "Every core of both boards, found through udev and named by the kernel (the M0+ started at boot)"
step rprocctl list
say "Start the M4 with its configured firmware"
step rprocctl start m4
step rprocctl status m4
say "The same API through busctl"
step busctl --system get-property org.rprocd1 /org/rprocd1/processor/m4 org.rprocd1.Processor State
step busctl --system call org.rprocd1 /org/rprocd1/processor/m33 org.rprocd1.Processor Start s m33-good.elf
say "Switch the M33 to an image linked for the wrong memory: refused before the kernel sees it, and rolled back"
step rprocctl restart m33 bad-segment-outside.elf
step rprocctl inspect bad-segment-outside.elf
step rprocctl list
say "A watchdog crash, injected through the emulated debugfs as the M4's watchdog IRQ would report it"
step sh -c 'echo 1 > /sys/kernel/debug/remoteproc/remoteproc0/crash'
sleep 1
step rprocctl status m4
say "Its coredump, with the firmware's last trace lines, kept by rprocd"
step rprocctl coredump list
say "The coprocessor's own log"
step sh -c 'rprocctl logs m33 | tail -n 5'
say "Stop everything but the M0+"
step rprocctl stop m4
step rprocctl stop m33
step rprocctl list
