#!/bin/sh
# `make demo`: the real daemon on two emulated boards (STM32MP157F-DK with its
# M4, STM32MP257F-DK with its M33 and M0+), driven the way a user would.
set -eu
cd "$(dirname "$0")/.."
FW=tests/firmware/build
exec .venv/bin/rprocd-sim --board stm32mp157f-dk --board stm32mp257f-dk --daemon \
    --config scripts/demo.conf \
    --firmware "$FW/m4-good.elf" --firmware "$FW/m4-crash.elf" \
    --firmware "$FW/m33-good.elf" --firmware "$FW/m0-good.elf" \
    --firmware "$FW/bad-segment-outside.elf" \
    -- sh scripts/demo-session.sh
