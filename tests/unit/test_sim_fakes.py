"""Recording fakes of the emulator seams, and builders of synthetic firmware.

Imported by the other test_sim_* modules (pytest puts tests/unit on sys.path).
The builders make ELF images, resource tables and OP-TEE signed images byte
by byte with struct, so the kernel tests do not depend on the ARM toolchain.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rprocd.sim.interfaces import SimFile

# ------------------------------------------------------------------ fakes


@dataclass
class Dev:
    subsystem: str
    name: str
    parent: str | None
    properties: dict[str, str]
    files: dict[str, SimFile]
    links: dict[str, str] = field(default_factory=dict)


class FakeDevices:
    """DeviceSink that records (action, syspath) and keeps the device tree."""

    def __init__(self) -> None:
        self.devices: dict[str, Dev] = {}
        self.events: list[tuple[str, str]] = []
        self._cv = threading.Condition()

    def add(self, subsystem, name, parent, properties, files, links):  # noqa: ANN001
        if parent is None:
            base = ("/sys/devices/platform/soc" if subsystem == "platform"
                    else f"/sys/devices/virtual/{subsystem}")
        else:
            assert parent in self.devices, f"parent {parent} missing"
            base = parent + ("/remoteproc" if subsystem == "remoteproc" else "")
        path = f"{base}/{name}"
        with self._cv:
            assert path not in self.devices, f"{path} added twice"
            self.devices[path] = Dev(subsystem, name, parent, dict(properties), dict(files),
                                     dict(links))
            self.events.append(("add", path))
            self._cv.notify_all()
        return path

    def remove(self, syspath: str) -> None:
        with self._cv:
            assert syspath in self.devices, f"remove of unknown {syspath}"
            for p in [p for p in self.devices if p == syspath or p.startswith(syspath + "/")]:
                del self.devices[p]
            self.events.append(("remove", syspath))
            self._cv.notify_all()

    def uevent(self, syspath: str, action: str) -> None:
        with self._cv:
            assert syspath in self.devices, f"uevent on unknown {syspath}"
            self.events.append((action, syspath))
            self._cv.notify_all()

    def link(self, syspath: str, name: str, target: str | None) -> None:
        with self._cv:
            dev = self.devices[syspath]
            if target is None:
                del dev.links[name]
            else:
                dev.links[name] = target
            self._cv.notify_all()

    # helpers
    def find(self, name: str) -> tuple[str, Dev]:
        hits = [(p, d) for p, d in self.devices.items() if d.name == name]
        assert len(hits) == 1, f"{name}: {hits}"
        return hits[0]

    def names(self, subsystem: str) -> list[str]:
        return [d.name for d in self.devices.values() if d.subsystem == subsystem]

    def file(self, name: str, attr: str) -> SimFile:
        return self.find(name)[1].files[attr]

    def read(self, name: str, attr: str) -> str:
        f = self.file(name, attr)
        assert f.read is not None
        return f.read().decode()

    def write(self, name: str, attr: str, data: bytes | str) -> int:
        f = self.file(name, attr)
        assert f.write is not None
        return f.write(data.encode() if isinstance(data, str) else data)

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int) -> list[tuple[str, str]]:
        """Events after `mark`, with syspaths shortened to device names."""
        return [(a, p.rsplit("/", 1)[1]) for a, p in self.events[mark:]]

    def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        with self._cv:
            assert self._cv.wait_for(pred, timeout), "timed out waiting for devices"


class FakeDebugfs:
    """DebugfsSink; add_dir merges files (the stricter reading of the seam)."""

    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, SimFile]] = {}
        self.calls: list[tuple[str, str]] = []

    def add_dir(self, relpath: str, files: dict[str, SimFile]) -> None:
        self.dirs.setdefault(relpath, {}).update(files)
        self.calls.append(("add_dir", relpath))

    def remove_dir(self, relpath: str) -> None:
        self.dirs.pop(relpath, None)
        self.calls.append(("remove_dir", relpath))

    def read(self, relpath: str) -> bytes:
        d, _, f = relpath.rpartition("/")
        sf = self.dirs[d][f]
        assert sf.read is not None
        return sf.read()

    def write(self, relpath: str, data: bytes | str) -> int:
        d, _, f = relpath.rpartition("/")
        sf = self.dirs[d][f]
        assert sf.write is not None
        return sf.write(data.encode() if isinstance(data, str) else data)

    def files(self, relpath: str) -> list[str]:
        return sorted(self.dirs.get(relpath, {}))


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.005) -> None:
    """Poll a condition in a test (the kernel never announces state changes)."""
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(step)


# --------------------------------------------------------------- builders

EM_ARM = 40


def carveout(da: int, length: int, name: str, pa: int = 0, flags: int = 0,
             reserved: int = 0) -> bytes:
    return struct.pack("<IIIIII32s", 0, da, pa, length, flags, reserved, name.encode())


def devmem(da: int, length: int, name: str) -> bytes:
    return struct.pack("<IIIIII32s", 1, da, da, length, 0, 0, name.encode())


def trace(da: int, length: int, name: str = "trace0", reserved: int = 0) -> bytes:
    return struct.pack("<IIII32s", 2, da, length, reserved, name.encode())


def vdev(vrings: list[tuple[int, int, int]], vid: int = 7, dfeatures: int = 1,
         config_len: int = 0, reserved: tuple[int, int] = (0, 0)) -> bytes:
    body = struct.pack("<IIIIIIBBBB", 3, vid, 0, dfeatures, 0, config_len, 0, len(vrings),
                       *reserved)
    for da, align, num in vrings:
        body += struct.pack("<IIIII", da, align, num, 0, 0)
    return body + bytes(config_len)


def rsc_table(entries: list[bytes], ver: int = 1, reserved: tuple[int, int] = (0, 0),
              num: int | None = None) -> bytes:
    head = 16 + 4 * len(entries)
    offsets, off = [], head
    for e in entries:
        offsets.append(off)
        off += len(e)
    n = len(entries) if num is None else num
    return struct.pack(f"<IIII{len(entries)}I", ver, n, *reserved, *offsets) + b"".join(entries)


M4_VRINGS = [(0x10040000, 16, 16), (0x10041000, 16, 16)]
M4_TRACE = (0x10020000, 0x1000)
M4_TABLE_AT = 0x10030000


def m4_table(trace_len: int = M4_TRACE[1]) -> bytes:
    return rsc_table([vdev(M4_VRINGS), trace(M4_TRACE[0], trace_len)])


def script(**keys: object) -> bytes:
    lines = []
    for k, v in keys.items():
        for item in v if isinstance(v, list) else [v]:
            lines.append(f"{k}={item}")
    return ("\n".join(lines) + "\n").encode() + b"\0"


def build_elf(
    loads: list[tuple[int, bytes, int]] | None = None,
    sections: list[tuple[str, int, bytes]] | None = None,
    *,
    table: bytes | None = None,
    table_at: int | None = M4_TABLE_AT,
    behaviour: bytes | None = None,
    entry: int = 0x10000001,
    machine: int = EM_ARM,
    cls64: bool = False,
) -> bytes:
    """An ELF with one PT_LOAD per `loads` (paddr, data, memsz), the table as
    `.resource_table` (also loaded at table_at), `.rprocd_sim`, and sections."""
    loads = list(loads if loads is not None else default_loads())
    secs: list[tuple[str, int, bytes, bool]] = [(n, a, d, False) for n, a, d in sections or []]
    if table is not None:
        if table_at is not None:
            loads.append((table_at, table, len(table)))
        secs.append((".resource_table", table_at or 0, table, table_at is not None))
    if behaviour is not None:
        secs.append((".rprocd_sim", 0, behaviour, False))
    eh, ph, sh = (64, 56, 64) if cls64 else (52, 32, 40)
    off = eh + ph * len(loads)
    blob = bytearray()
    phdrs = []
    load_off = {}
    for paddr, data, memsz in loads:
        load_off[paddr] = off + len(blob)
        if cls64:
            phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, off + len(blob), paddr, paddr,
                                     len(data), memsz, 4))
        else:
            phdrs.append(struct.pack("<8I", 1, off + len(blob), paddr, paddr, len(data), memsz,
                                     7, 4))
        blob += data
    names = bytearray(b"\0")
    shdrs = [bytes(sh)]
    for name, addr, data, loaded in [*secs, (".shstrtab", 0, b"", False)]:
        name_off = len(names)
        names += name.encode() + b"\0"
        if name == ".shstrtab":
            data = bytes(names)
        if loaded and addr in load_off:
            data_off = load_off[addr]
        else:
            data_off = off + len(blob)
            blob += data
        if cls64:
            shdrs.append(struct.pack("<IIQQQQIIQQ", name_off, 1, 2 if addr else 0, addr,
                                     data_off, len(data), 0, 0, 4, 0))
        else:
            shdrs.append(struct.pack("<10I", name_off, 1, 2 if addr else 0, addr, data_off,
                                     len(data), 0, 0, 4, 0))
    shoff = off + len(blob)
    ident = b"\x7fELF" + bytes([2 if cls64 else 1, 1, 1]) + bytes(9)
    if cls64:
        head = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, eh, shoff, 0x5000200,
                           eh, ph, len(loads), sh, len(shdrs), len(shdrs) - 1)
    else:
        head = struct.pack("<16sHHIIIIIHHHHHH", ident, 2, machine, 1, entry, eh, shoff, 0x5000200,
                           eh, ph, len(loads), sh, len(shdrs), len(shdrs) - 1)
    return head + b"".join(phdrs) + bytes(blob) + b"".join(shdrs)


def default_loads() -> list[tuple[int, bytes, int]]:
    """Vectors in retram, code in mcuram, the trace buffer as bss."""
    return [
        (0x00000000, b"\x00\x00\x04\x10" + bytes(60), 64),
        (0x10000000, bytes(range(256)), 0x400),
        (M4_TRACE[0], b"", M4_TRACE[1]),
    ]


def m4_image(**sim: object) -> bytes:
    """A good m4 image: vdev + trace table, scripted behaviour (fast by default)."""
    keys: dict[str, object] = {"boot_ms": 0, "shutdown_ack_ms": 0}
    keys.update(sim)
    return build_elf(table=m4_table(), behaviour=script(**keys))


# ------------------------------------------------------------- signed images


def _r8(n: int) -> int:
    return (n + 7) & ~7


def _tlv(typ: int, value: bytes) -> bytes:
    rec = struct.pack("<II", typ, len(value)) + value
    return rec + bytes(_r8(len(rec)) - len(rec))


_KEY = None


def rsa_key():  # noqa: ANN201
    """One RSA-2048 test key per test session."""
    global _KEY
    if _KEY is None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEY


def write_public_key(path: Path, key=None) -> Path:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    key = key or rsa_key()
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def sign_image(elf: bytes, key=None, *, corrupt: str = "", ecdsa_key=None) -> bytes:  # noqa: ANN001
    """OP-TEE TLV signed image (§7.4) of one ELF32; `corrupt` breaks one part."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    from rprocd.sim import loader

    img = elf + bytes(_r8(len(elf)) - len(elf))
    table = b""
    for p in loader.program_headers(elf):
        if p.type != 1:
            continue
        body = elf[p.offset:p.offset + p.filesz]
        if corrupt == "hash":
            body = b"\xff" + body[1:]
        table += struct.pack("<8I", p.type, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz,
                             p.flags, 4) + hashlib.sha256(body).digest()
    signtype = 2 if ecdsa_key is not None else 1
    tlv = (_tlv(1, bytes([signtype])) + _tlv(2, b"\x01") + _tlv(3, b"\x01") + _tlv(4, b"\x01")
           + _tlv(5, struct.pack("<I", len(img))) + _tlv(0x10, table))
    sign_len = 64 if ecdsa_key is not None else 256
    header = struct.pack("<5I", 0x3543A468, 2 if corrupt == "version" else 1, len(tlv),
                         sign_len, len(img))
    msg = header + tlv
    if ecdsa_key is not None:
        der = ecdsa_key.sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = (key or rsa_key()).sign(msg, padding.PKCS1v15(), hashes.SHA256())
    if corrupt == "signature":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    out = msg + sig + bytes(_r8(sign_len) - sign_len) + img
    if corrupt == "magic":
        out = b"\0\0\0\0" + out[4:]
    if corrupt == "size":
        out += bytes(8)
    return out
