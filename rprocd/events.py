"""Journal MESSAGE_IDs, one per event kind; `systemd/rprocd.catalog` explains each.

They are stable identifiers: `journalctl MESSAGE_ID=...` finds an event kind
across releases, so never change one.
"""

STARTED = "24ea0b0779af451a9597b99593a506ab"
STOPPED = "6cf1a38a48814e81bd106584fd247a09"
CRASHED = "5d379fe426e940dc8e249e084aa86e6a"
RECOVERED = "5e621d8e612f419387d8c7d5a7b8099d"
START_LIMIT_HIT = "569abacc44924b71b86b111e1ed8195f"
FIRMWARE_REFUSED = "a1f5c44cf66f4c8bbae7b58317665e08"
COREDUMP_SAVED = "e762a43d691444b8b710fcf62be203e8"
ATTACHED = "3bf0a429fff44cdb97a311a9d669054d"
DETACHED = "9cae00d341814cd39f63a9f0f4eecf8e"
