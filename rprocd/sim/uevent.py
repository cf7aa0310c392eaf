"""Uevent delivery to the preloaded processes' udev monitors.

umockdev's own sender opens every listener socket non-blocking and exits the
whole process on EAGAIN, which a unix datagram queue of 10 (the default
`net.unix.max_dgram_qlen`) reaches in one crash recovery. This sender writes
the same libudev monitor message but waits for room, as the kernel's netlink
would buffer it, and only drops a message (with a warning, like an overrun
netlink socket) after a bounded wait, so a stopped listener never kills the
emulated machine.
"""

from __future__ import annotations

import glob
import itertools
import os
import socket
import struct
import sys
import threading

_MAGIC = 0xFEEDCAFE
_HEADER = struct.Struct("=8sIIIIIIII")


def murmur_hash2(data: bytes) -> int:
    """systemd's string_hash32, which libudev's socket filters match on."""
    m, r = 0x5BD1E995, 24
    h = len(data) & 0xFFFFFFFF
    end = len(data) - len(data) % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[end:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def message(action: str, devpath: str, subsystem: str, devtype: str | None,
            properties: dict[str, str], seqnum: int) -> bytes:
    """One libudev monitor message (header + NUL-separated properties)."""
    fields = {"ACTION": action, "DEVPATH": devpath, "SUBSYSTEM": subsystem,
              "SEQNUM": str(seqnum)}
    fields.update((k, v) for k, v in properties.items() if k not in fields)
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())
    header = _HEADER.pack(
        b"libudev\0",
        socket.htonl(_MAGIC),
        _HEADER.size,
        _HEADER.size,
        len(body),
        socket.htonl(murmur_hash2(subsystem.encode())),
        socket.htonl(murmur_hash2(devtype.encode())) if devtype else 0,
        0,
        0,
    )
    return header + body


class UeventSender:
    """Sends to every monitor socket the preload created in the testbed root."""

    def __init__(self, root: str, timeout: float = 5.0) -> None:
        self._glob = os.path.join(root, "event[0-9]*")
        self._timeout = timeout
        self._seqnum = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, syspath: str, action: str, subsystem: str,
             properties: dict[str, str]) -> None:
        devpath = syspath.removeprefix("/sys")
        with self._lock:
            data = message(action, devpath, subsystem, properties.get("DEVTYPE"),
                           properties, next(self._seqnum))
            for path in glob.glob(self._glob):
                self._send_one(path, data, f"{action} {devpath}")

    def _send_one(self, path: str, data: bytes, what: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self._timeout)
            try:
                sock.sendto(data, path)
            except ConnectionRefusedError:
                # The monitor's process is gone: forget its socket, as umockdev does.
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            except FileNotFoundError:
                pass
            except OSError as e:  # timeout included: the listener stopped reading
                print(f"rprocd-sim: uevent '{what}' dropped for {path}: {e}",
                      file=sys.stderr)
