"""The emulated kernel's firmware loader (ABI reference §5, §6, §7.3, §7.4).

It reads bytes itself, check by check in the kernel's order, and never uses
the daemon's validator: it plays the kernel, so a fault in one of them cannot
hide in the other. Every refusal is a KernelError carrying the errno the
`write(state, "start")` returns and the kernel log line that explains it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PATH_MAX = 4096
PT_LOAD = 1
RSC_TABLE = b".resource_table"
BEHAVIOUR = b".rprocd_sim"

RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV, RSC_LAST = 0, 1, 2, 3, 4
RSC_VENDOR_START, RSC_VENDOR_END = 128, 512
FW_RSC_ADDR_ANY = 0xFFFFFFFF


class KernelError(OSError):
    """An errno plus the kernel log line that explains it."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.message = message


def u32(buf: bytes | bytearray, off: int) -> int:
    """A little-endian u32; bytes past the end read as 0 (the kernel reads
    whatever follows; the emulator must not crash on it)."""
    chunk = bytes(buf[off:off + 4]) if off >= 0 else b""
    return int.from_bytes(chunk.ljust(4, b"\0"), "little")


def cstr(buf: bytes | bytearray, off: int = 0, limit: int | None = None) -> bytes:
    """A NUL-terminated string at `off` (at most `limit` bytes)."""
    end = len(buf) if limit is None else min(len(buf), off + limit)
    raw = bytes(buf[off:end]) if 0 <= off else b""
    return raw.split(b"\0", 1)[0]


# --------------------------------------------------------------- request_firmware


def name_contains_dotdot(name: str) -> bool:
    """firmware_loader's path-traversal check (v6.11+)."""
    return (
        name == ".." or name.startswith("../") or "/../" in name or name.endswith("/..")
    )


@dataclass(frozen=True)
class Firmware:
    name: str
    path: str
    data: bytes


def request_firmware(name: str, dirs: Sequence[str]) -> Firmware:
    """Direct filesystem load: first hit in `dirs` wins, errors as the kernel's."""
    if not name or name_contains_dotdot(name):
        raise KernelError(errno.EINVAL, f"Direct firmware load for {name} failed with error -22")
    rc = errno.ENOENT
    for d in dirs:
        if not d:
            continue
        path = f"{d}/{name}"
        if len(os.fsencode(path)) >= PATH_MAX:
            rc = errno.ENAMETOOLONG
            break
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            rc = e.errno or errno.ENOENT
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size <= 0:
                rc = errno.EINVAL
                continue
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return Firmware(name, path, b"".join(chunks))
        except OSError as e:
            rc = e.errno or errno.EIO
        finally:
            os.close(fd)
    raise KernelError(rc, f"Direct firmware load for {name} failed with error -{rc}")


# --------------------------------------------------------------------------- ELF


@dataclass(frozen=True)
class Phdr:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class Shdr:
    name: bytes
    type: int
    addr: int
    offset: int
    size: int


def sanity_check(data: bytes) -> None:
    """rproc_elf_sanity_check, in the kernel's order; every failure is EINVAL."""

    def bad(msg: str) -> KernelError:
        return KernelError(errno.EINVAL, msg)

    size = len(data)
    if size < 52:
        raise bad("Image is too small")
    if data[:4] != b"\x7fELF":
        raise bad("Image is corrupted (bad magic)")
    cls = data[4]
    if cls not in (1, 2):
        raise bad(f"Unsupported class: {cls}")
    if cls == 2 and size < 64:
        raise bad("elf64 header is too small")
    if data[5] != 1:
        raise bad("Unsupported firmware endianness")
    shoff, phnum, phoff = _hdr(data, "e_shoff"), _hdr(data, "e_phnum"), _hdr(data, "e_phoff")
    if size < shoff + (40 if cls == 1 else 64):
        raise bad("Image is too small")
    if phnum == 0:
        raise bad("No loadable segments")
    if phoff > size:
        raise bad("Firmware size is too small")


_EH32 = {"e_entry": (24, "I"), "e_phoff": (28, "I"), "e_shoff": (32, "I"),
         "e_phentsize": (42, "H"), "e_phnum": (44, "H"), "e_shentsize": (46, "H"),
         "e_shnum": (48, "H"), "e_shstrndx": (50, "H"), "e_version": (20, "I"),
         "e_machine": (18, "H"), "e_type": (16, "H")}
_EH64 = {"e_entry": (24, "Q"), "e_phoff": (32, "Q"), "e_shoff": (40, "Q"),
         "e_phentsize": (54, "H"), "e_phnum": (56, "H"), "e_shentsize": (58, "H"),
         "e_shnum": (60, "H"), "e_shstrndx": (62, "H"), "e_version": (20, "I"),
         "e_machine": (18, "H"), "e_type": (16, "H")}


def _read(data: bytes | bytearray, off: int, fmt: str) -> int:
    n = struct.calcsize(fmt)
    chunk = bytes(data[off:off + n]).ljust(n, b"\0") if off >= 0 else bytes(n)
    return struct.unpack("<" + fmt, chunk)[0]


def _hdr(data: bytes, field: str) -> int:
    off, fmt = (_EH64 if data[4] == 2 else _EH32)[field]
    return _read(data, off, fmt)


def entry_point(data: bytes) -> int:
    return _hdr(data, "e_entry")


def program_headers(data: bytes) -> list[Phdr]:
    """All e_phnum headers at the class's natural stride (e_phentsize unused)."""
    is64 = data[4] == 2
    phoff, phnum = _hdr(data, "e_phoff"), _hdr(data, "e_phnum")
    out = []
    for i in range(phnum):
        o = phoff + i * (56 if is64 else 32)
        if is64:
            t, fl = _read(data, o, "I"), _read(data, o + 4, "I")
            off, va, pa, fs, ms = (_read(data, o + k, "Q") for k in (8, 16, 24, 32, 40))
        else:
            t, off, va, pa, fs, ms, fl = (_read(data, o + k, "I")
                                          for k in (0, 4, 8, 12, 16, 20, 24))
        out.append(Phdr(t, off, va, pa, fs, ms, fl))
    return out


def section_headers(data: bytes) -> list[Shdr]:
    """Section headers named through e_shstrndx; entries past the file are dropped."""
    is64 = data[4] == 2
    ent = 64 if is64 else 40
    shoff, shnum, shstrndx = _hdr(data, "e_shoff"), _hdr(data, "e_shnum"), _hdr(data, "e_shstrndx")

    def raw(i: int) -> tuple[int, int, int, int, int]:
        o = shoff + i * ent
        if is64:
            return (_read(data, o, "I"), _read(data, o + 4, "I"), _read(data, o + 16, "Q"),
                    _read(data, o + 24, "Q"), _read(data, o + 32, "Q"))
        return tuple(_read(data, o + k, "I") for k in (0, 4, 12, 16, 20))  # type: ignore[return-value]

    names_off = raw(shstrndx)[3]
    out = []
    for i in range(shnum):
        if shoff + (i + 1) * ent > len(data):
            break
        name, typ, addr, off, size = raw(i)
        out.append(Shdr(cstr(data, names_off + name, 256) if names_off + name < len(data) else b"",
                        typ, addr, off, size))
    return out


def find_section(data: bytes, name: bytes) -> Shdr | None:
    return next((s for s in section_headers(data) if s.name == name), None)


def find_table(data: bytes) -> Shdr:
    """rproc_elf_find_table: the first `.resource_table`, checked; EINVAL otherwise."""
    sh = find_section(data, RSC_TABLE)
    if sh is None:
        raise KernelError(errno.EINVAL, "no resource table found")
    check_table_bytes(data, sh.offset, sh.size, len(data))
    return sh


def check_table_bytes(data: bytes, offset: int, size: int, total: int) -> None:
    """§5.3 checks of a table at data[offset:offset+size]."""
    if offset + size > total:
        raise KernelError(errno.EINVAL, "resource table truncated")
    if size < 16:
        raise KernelError(errno.EINVAL, "header-less resource table")
    ver = u32(data, offset)
    if ver != 1:
        raise KernelError(errno.EINVAL, f"unsupported fw ver: {ver}")
    if u32(data, offset + 8) or u32(data, offset + 12):
        raise KernelError(errno.EINVAL, "non zero reserved bytes")
    if 16 + 4 * u32(data, offset + 4) > size:
        raise KernelError(errno.EINVAL, "resource table incomplete")


def load_segments(
    data: bytes,
    write: Callable[[int, int, bytes], bool],
    *,
    skip_empty: bool = True,
    host_bits: int = 64,
) -> None:
    """rproc_elf_load_segments: `write(da, memsz, filebytes)` returns False when
    [da, da+memsz) is not inside one carveout ("bad phdr da")."""
    for ph in program_headers(data):
        if ph.type != PT_LOAD or (skip_empty and ph.memsz == 0):
            continue
        if ph.filesz > ph.memsz:
            raise KernelError(errno.EINVAL, f"bad phdr filesz 0x{ph.filesz:x} memsz 0x{ph.memsz:x}")
        if ph.offset + ph.filesz > len(data):
            raise KernelError(
                errno.EINVAL,
                f"truncated fw: need 0x{ph.offset + ph.filesz:x} avail 0x{len(data):x}",
            )
        if ph.memsz >= 1 << host_bits:
            raise KernelError(errno.EOVERFLOW, f"size ({ph.memsz:x}) does not fit in size_t type")
        if ph.memsz == 0 or not write(ph.paddr, ph.memsz, data[ph.offset:ph.offset + ph.filesz]):
            raise KernelError(errno.EINVAL, f"bad phdr da 0x{ph.paddr:x} mem 0x{ph.memsz:x}")


@dataclass(frozen=True)
class ImageInfo:
    """What the running firmware knows about itself (not what the kernel checked)."""

    entry: int
    behaviour: bytes | None
    table_addr: int | None
    table: bytes | None
    boot_vector: int | None


def describe(data: bytes) -> ImageInfo:
    """Facts about an ELF image the emulated hardware needs; never raises."""
    try:
        sections = section_headers(data)
    except (IndexError, struct.error):
        sections = []
    by = {}
    for s in sections:
        by.setdefault(s.name, s)
    beh = by.get(BEHAVIOUR)
    tab = by.get(RSC_TABLE)
    vec = by.get(b".isr_vectors") or by.get(b"A0")
    return ImageInfo(
        entry=_hdr(data, "e_entry") if len(data) >= 52 else 0,
        behaviour=data[beh.offset:beh.offset + beh.size] if beh else None,
        table_addr=tab.addr if tab else None,
        table=data[tab.offset:tab.offset + tab.size] if tab and tab.size else None,
        boot_vector=vec.addr if vec else None,
    )


# ------------------------------------------------------------- resource tables


def table_entries(table: bytes | bytearray) -> list[tuple[int, int]]:
    """(offset, type) of each entry, as the debugfs dump walks them."""
    num = u32(table, 4)
    out = []
    for i in range(min(num, max(0, (len(table) - 16) // 4))):
        off = u32(table, 16 + 4 * i)
        out.append((off, u32(table, off)))
    return out


def first_trace(table: bytes | None) -> tuple[int, int] | None:
    """The firmware's own trace buffer (da, len): the first trace entry of its table."""
    if not table:
        return None
    for off, typ in table_entries(table):
        if typ == RSC_TRACE:
            return u32(table, off + 4), u32(table, off + 8)
    return None


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def format_table(table: bytes | bytearray | None) -> str:
    """debugfs `resource_table` (rproc_rsc_table_show), byte for byte."""
    if table is None:
        return "No resource table found\n"
    types = ("carveout", "devmem", "trace", "vdev")
    out: list[str] = []
    for i, (off, typ) in enumerate(table_entries(table)):
        b = off + 4
        name = lambda o: cstr(table, o, 32).decode("latin-1")  # noqa: E731
        if typ in (RSC_CARVEOUT, RSC_DEVMEM):
            out += [f"Entry {i} is of type {types[typ]}\n",
                    f"  Device Address 0x{u32(table, b):x}\n",
                    f"  Physical Address 0x{u32(table, b + 4):x}\n",
                    f"  Length 0x{u32(table, b + 8):x} Bytes\n",
                    f"  Flags 0x{u32(table, b + 12):x}\n",
                    f"  Reserved (should be zero) [{_s32(u32(table, b + 16))}]\n",
                    f"  Name {name(b + 20)}\n\n"]
        elif typ == RSC_TRACE:
            out += [f"Entry {i} is of type trace\n",
                    f"  Device Address 0x{u32(table, b):x}\n",
                    f"  Length 0x{u32(table, b + 4):x} Bytes\n",
                    f"  Reserved (should be zero) [{_s32(u32(table, b + 8))}]\n",
                    f"  Name {name(b + 12)}\n\n"]
        elif typ == RSC_VDEV:
            nvr = _byte(table, b + 21)
            out += [f"Entry {i} is of type vdev\n",
                    f"  ID {_s32(u32(table, b))}\n",
                    f"  Notify ID {_s32(u32(table, b + 4))}\n",
                    f"  Device features 0x{u32(table, b + 8):x}\n",
                    f"  Guest features 0x{u32(table, b + 12):x}\n",
                    f"  Config length 0x{u32(table, b + 16):x}\n",
                    f"  Status 0x{_byte(table, b + 20):x}\n",
                    f"  Number of vrings {nvr}\n",
                    f"  Reserved (should be zero) [{_byte(table, b + 22)}]"
                    f"[{_byte(table, b + 23)}]\n\n"]
            for j in range(nvr):
                v = b + 24 + 20 * j
                out += [f"  Vring {j}\n",
                        f"    Device Address 0x{u32(table, v):x}\n",
                        f"    Alignment {_s32(u32(table, v + 4))}\n",
                        f"    Number of buffers {_s32(u32(table, v + 8))}\n",
                        f"    Notify ID {_s32(u32(table, v + 12))}\n",
                        f"    Physical Address 0x{u32(table, v + 16):x}\n\n"]
        else:
            out.append(f"Unknown resource type found: {_s32(typ)} [hdr: 0000000000000000]\n")
    return "".join(out)


def _byte(buf: bytes | bytearray, off: int) -> int:
    return buf[off] if 0 <= off < len(buf) else 0


def vring_size(num: int, align: int) -> int:
    """Bytes of a split virtqueue (include/uapi/linux/virtio_ring.h), page aligned."""
    size = ((16 * num + 2 * (3 + num) + align - 1) & ~(align - 1)) + 2 * 3 + 8 * num
    return (size + 4095) & ~4095


# ---------------------------------------------------------------- TEE (§7.3/7.4)

TEE_MAGIC = 0x3543A468
TLV_SIGNTYPE, TLV_HASHTYPE, TLV_NUM_IMG, TLV_IMGTYPE, TLV_IMGSIZE = 1, 2, 3, 4, 5
TLV_HASHTABLE, TLV_PKEYINFO = 0x10, 0x11


def _r8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class TeeImage:
    """What the emulated remoteproc TA authenticated: segments to load, table, behaviour."""

    segments: tuple[tuple[int, int, bytes], ...]  # (da, memsz, filebytes)
    table_addr: int | None
    table: bytes | None
    behaviour: bytes | None
    entry: int


def _ta_fail(msg: str) -> KernelError:
    return KernelError(errno.EIO, f"TA: {msg}")


def _tlvs(area: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off < len(area):
        if off + 8 > len(area):
            raise _ta_fail("truncated TLV header")
        typ, length = struct.unpack_from("<II", area, off)
        if off + 8 + length > len(area):
            raise _ta_fail(f"TLV 0x{typ:x} overflows the TLV area")
        out.setdefault(typ, area[off + 8:off + 8 + length])
        off += _r8(8 + length)
    return out


def _verify_signature(signtype: int, key_path: str | None, message: bytes, sig: bytes) -> None:
    if key_path is None:
        raise _ta_fail("no platform public key configured (option tee_key)")
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
    except ImportError as e:  # pragma: no cover - the sim extra installs it
        raise _ta_fail(f"cannot verify signatures: {e}") from e
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_public_key(f.read())
    except (OSError, ValueError) as e:
        raise _ta_fail(f"cannot read public key {key_path}: {e}") from e
    try:
        if signtype == 1 and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif signtype == 2 and isinstance(key, ec.EllipticCurvePublicKey) and len(sig) == 64:
            der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                             int.from_bytes(sig[32:], "big"))
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        else:
            raise _ta_fail(f"signature type {signtype} does not match the platform key")
    except InvalidSignature as e:
        raise _ta_fail("signature verification failed") from e


def _tee_elf(img: bytes, hashes_tab: bytes, fits: Callable[[int, int], bool]) -> list:
    if len(img) < 52 or img[:4] != b"\x7fELF" or img[4] != 1 or img[5] != 1:
        raise _ta_fail("embedded image is not a little-endian ELF32")
    if img[6] != 1 or _hdr(img, "e_version") != 1:
        raise _ta_fail("embedded image is not EV_CURRENT")
    if _hdr(img, "e_phentsize") != 32 or _hdr(img, "e_shentsize") != 40 or not _hdr(img, "e_phnum"):
        raise _ta_fail("bad ELF header sizes or no program header")
    entries = {}
    for i in range(len(hashes_tab) // 64):
        ent = hashes_tab[i * 64:(i + 1) * 64]
        entries.setdefault(struct.unpack_from("<I", ent, 12)[0], ent)
    segs = []
    for ph in program_headers(img):
        if ph.type != PT_LOAD:
            continue
        ent = entries.get(ph.paddr)
        if ent is None:
            raise _ta_fail(f"segment 0x{ph.paddr:x} has no hash table entry")
        typ, _, _, _, fsz, msz = struct.unpack_from("<6I", ent, 0)
        if (typ, fsz, msz) != (ph.type, ph.filesz, ph.memsz):
            raise _ta_fail(f"segment 0x{ph.paddr:x} does not match its hash table entry")
        body = img[ph.offset:ph.offset + ph.filesz]
        if len(body) != ph.filesz or ph.filesz > ph.memsz:
            raise _ta_fail(f"segment 0x{ph.paddr:x} truncated")
        if hashlib.sha256(body).digest() != ent[32:64]:
            raise _ta_fail(f"segment 0x{ph.paddr:x} hash mismatch")
        if ph.memsz and not fits(ph.paddr, ph.memsz):
            raise _ta_fail(f"segment 0x{ph.paddr:x}+0x{ph.memsz:x} outside the core's memory")
        segs.append((ph.paddr, ph.memsz, body))
    return segs


def tee_authenticate(
    data: bytes, key_path: str | None, fits: Callable[[int, int], bool]
) -> TeeImage:
    """The OP-TEE remoteproc TA's LOAD_FW on a TLV signed image; any failure is EIO."""
    if len(data) < 20:
        raise _ta_fail("image smaller than the header")
    magic, version, tlv_len, sign_len, img_len = struct.unpack_from("<5I", data, 0)
    if magic != TEE_MAGIC:
        raise _ta_fail(f"bad magic 0x{magic:08x}")
    if version != 1:
        raise _ta_fail(f"unsupported version {version}")
    if not tlv_len or not sign_len or not img_len:
        raise _ta_fail("zero TLV, signature or image length")
    if len(data) != 20 + _r8(sign_len) + _r8(img_len) + _r8(tlv_len):
        raise _ta_fail("file size does not match the header")
    tlv_end = 20 + _r8(tlv_len)
    sig = data[tlv_end:tlv_end + sign_len]
    images = data[tlv_end + _r8(sign_len):tlv_end + _r8(sign_len) + img_len]
    tlv = _tlvs(data[20:20 + tlv_len])
    st = tlv.get(TLV_SIGNTYPE)
    if st is None or len(st) != 1 or st[0] not in (1, 2):
        raise _ta_fail("missing or bad SIGNTYPE")
    _verify_signature(st[0], key_path, data[:tlv_end], sig)
    num = tlv.get(TLV_NUM_IMG)
    if num is None or len(num) != 1 or num[0] == 0:
        raise _ta_fail("missing or bad NUM_IMG")
    n = num[0]
    types, sizes = tlv.get(TLV_IMGTYPE, b""), tlv.get(TLV_IMGSIZE, b"")
    if len(types) != n or any(t != 1 for t in types):
        raise _ta_fail("IMGTYPE must list one ELF (1) per image")
    if len(sizes) != 4 * n:
        raise _ta_fail("IMGSIZE must list one size per image")
    table_hashes = tlv.get(TLV_HASHTABLE, b"")
    if not table_hashes or len(table_hashes) % 64:
        raise _ta_fail("missing or bad HASHTABLE")
    segments: list = []
    table = None
    behaviour = None
    entry = 0
    pos = 0
    for i in range(n):
        size = struct.unpack_from("<I", sizes, 4 * i)[0]
        img = images[pos:pos + size]
        if len(img) != size:
            raise _ta_fail(f"image {i} exceeds the image area")
        pos += size
        segments += _tee_elf(img, table_hashes, fits)
        entry = entry or _hdr(img, "e_entry")
        sh = find_section(img, RSC_TABLE)
        if sh is not None and sh.size:
            if table is not None:
                raise _ta_fail("more than one resource table")
            try:
                check_table_bytes(img, sh.offset, sh.size, len(img))
            except KernelError as e:
                raise _ta_fail(e.message) from e
            table = (sh.addr, img[sh.offset:sh.offset + sh.size])
        beh = find_section(img, BEHAVIOUR)
        if beh is not None and behaviour is None:
            behaviour = img[beh.offset:beh.offset + beh.size]
    return TeeImage(
        tuple(segments),
        table[0] if table else None,
        table[1] if table else None,
        behaviour,
        entry,
    )
