"""OP-TEE signed images: the TLV format and ST's legacy 56-byte header (ABI §7.4).

The rules are the remoteproc TA's (optee_os `ta/remoteproc`), in its order.
The signature itself needs the platform's public key, which only OP-TEE has;
everything else (layout, TLVs, the segment hash table) is checked here, so a
`-5` from the kernel is explained before it happens.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from rprocd.firmware.binary import Blob
from rprocd.firmware.elfimage import PT_LOAD, Phdr
from rprocd.firmware.findings import Checks

SIGNED_MAGIC = 0x3543A468
TLV_HEADER = struct.Struct("<5I")  # magic, version, tlv_len, sign_len, img_len
LEGACY_HEADER = struct.Struct("<14I")
HASH_ENTRY = struct.Struct("<8I32s")  # Elf32_Phdr + SHA-256
HASH_ENTRY_SIZE = HASH_ENTRY.size  # 64
U32_MAX = 0xFFFFFFFF

TLV_SIGNTYPE, TLV_HASHTYPE, TLV_NUM_IMG, TLV_IMGTYPE, TLV_IMGSIZE = 1, 2, 3, 4, 5
TLV_HASHTABLE, TLV_PKEYINFO = 0x10, 0x11
SIGN_TYPES = {1: "RSASSA-PKCS1-v1.5/SHA-256", 2: "ECDSA-P256/SHA-256"}
IMG_TYPE_ELF = 1

TLV_FORMAT = "TEE-TLV"
LEGACY_FORMAT = "ST-legacy-signed"


def r8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class HashEntry:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    digest: bytes


@dataclass
class SignedImage:
    """The parts of a signed file that the ELF checks need."""

    format: str
    images: list[tuple[int, int]] = field(default_factory=list)  # (file offset, size)
    hashes: list[HashEntry] = field(default_factory=list)


def is_signed(blob: Blob) -> bool:
    return blob.size >= 4 and blob.u32(0) == SIGNED_MAGIC


def detect(blob: Blob) -> str:
    """Which of the two layouts (same magic) the file follows: the TLV one if
    its exact size rule holds, the legacy one if its header-length rule
    holds, else the TLV one (the current format, whose checks then explain)."""
    if blob.size >= TLV_HEADER.size:
        _, _, tlv_len, sign_len, img_len = blob.unpack(TLV_HEADER, 0)
        if TLV_HEADER.size + r8(tlv_len) + r8(sign_len) + r8(img_len) == blob.size:
            return TLV_FORMAT
    if blob.size >= LEGACY_HEADER.size:
        h = blob.unpack(LEGACY_HEADER, 0)
        if h[2] == _legacy_header_length(h[3], h[6], h[9]):
            return LEGACY_FORMAT
    return TLV_FORMAT


def _legacy_header_length(sign_len: int, phhdr_len: int, key_len: int) -> int:
    return (LEGACY_HEADER.size + sign_len + phhdr_len + key_len
            + sign_len % 8 + phhdr_len % 8 + key_len % 8)


def parse(blob: Blob, checks: Checks) -> SignedImage | None:
    """Check the header and metadata; None if the images cannot be located."""
    if detect(blob) == LEGACY_FORMAT:
        return _parse_legacy(blob, checks)
    return _parse_tlv(blob, checks)


def _refuse(checks: Checks, code: str, what: str, fix: str = "sign the ELF image again") -> None:
    checks.error(code, f"{what}, so OP-TEE refuses the image (the kernel returns -5): {fix}")


def _signature_note(checks: Checks, sign_type: int, sign_len: int) -> None:
    checks.note(
        "signature",
        f"the {SIGN_TYPES.get(sign_type, 'unknown')} signature ({sign_len} bytes) can only be "
        "verified by OP-TEE with the platform key; rprocd checked the layout and segment "
        "hashes, and a key mismatch shows as 'Boot failed: -5'",
    )


def _parse_tlv(blob: Blob, checks: Checks) -> SignedImage | None:
    if blob.size < TLV_HEADER.size:
        _refuse(checks, "signed-header",
                f"the file is {blob.size} bytes, too short for the 20-byte signed image header")
        return None
    _magic, version, tlv_len, sign_len, img_len = blob.unpack(TLV_HEADER, 0)
    info = {"header_version": version, "tlv_len": tlv_len, "sign_len": sign_len,
            "img_len": img_len}
    signed = SignedImage(TLV_FORMAT)
    checks.report.signed = info  # filled in as parsing goes, shown even if it fails
    meta = TLV_HEADER.size + r8(tlv_len) + r8(sign_len)
    if not tlv_len or not sign_len or meta > U32_MAX or blob.size <= meta:
        _refuse(checks, "signed-header",
                f"the header's TLV length ({tlv_len}) or signature length ({sign_len}) is zero "
                f"or does not fit in the {blob.size}-byte file")
        return None
    if version != 1:
        _refuse(checks, "signed-version",
                f"the signed image header has version {version}, OP-TEE knows version 1")
        return None
    expected = meta + r8(img_len)
    if expected != blob.size:
        _refuse(checks, "signed-size",
                f"the file is {blob.size} bytes but its header describes {expected} (header, "
                "TLVs, signature and images, each padded to 8 bytes)",
                "the file was cut or padded after signing; sign it again")
        return None
    tlvs = _tlvs(blob, TLV_HEADER.size, tlv_len)
    info["tlv_types"] = sorted({t for t, _, _ in tlvs})
    sign = _tlv(blob, tlvs, TLV_SIGNTYPE)
    if sign is None or len(sign) != 1:
        _refuse(checks, "signed-tlv", "the SIGNTYPE TLV is missing or not one byte")
        return None
    info["sign_type"] = SIGN_TYPES.get(sign[0], f"unknown ({sign[0]})")
    if sign[0] not in SIGN_TYPES:
        _refuse(checks, "signature", f"the signature type {sign[0]} is not supported "
                "(1 = RSA PKCS#1 v1.5, 2 = ECDSA P-256)")
        return None
    _signature_note(checks, sign[0], sign_len)
    info["key_info"] = _tlv(blob, tlvs, TLV_PKEYINFO) is not None
    hashes = _tlv(blob, tlvs, TLV_HASHTABLE)
    if hashes is None or len(hashes) % HASH_ENTRY_SIZE:
        _refuse(checks, "hash-table", "the HASHTABLE TLV is missing or not a whole number "
                "of 64-byte entries")
        return None
    signed.hashes = _hash_entries(hashes)
    info["hash_entries"] = len(signed.hashes)
    count = _tlv(blob, tlvs, TLV_NUM_IMG)
    if count is None or len(count) != 1 or count[0] == 0:
        _refuse(checks, "signed-tlv", "the NUM_IMG TLV is missing, not one byte, or zero")
        return None
    num = count[0]
    types = _tlv(blob, tlvs, TLV_IMGTYPE)
    sizes = _tlv(blob, tlvs, TLV_IMGSIZE)
    if types is None or len(types) != num or sizes is None or len(sizes) != 4 * num:
        _refuse(checks, "signed-tlv", f"the IMGTYPE or IMGSIZE TLV does not describe {num} "
                "images")
        return None
    area = meta
    offset = 0
    for i in range(num):
        size = struct.unpack_from("<I", sizes, 4 * i)[0]
        if types[i] != IMG_TYPE_ELF:
            _refuse(checks, "signed-tlv", f"image {i} has type {types[i]}, OP-TEE loads only "
                    "type 1 (ELF)")
            return None
        if offset + size > img_len:
            _refuse(checks, "signed-tlv", f"image {i} ({size} bytes at offset {offset}) runs "
                    f"past the {img_len}-byte image area")
            return None
        signed.images.append((area + offset, size))
        offset += size
    info["image_sizes"] = [size for _, size in signed.images]
    return signed


def _tlvs(blob: Blob, start: int, length: int) -> list[tuple[int, int, int]]:
    """(type, value offset, value length) of each record, walked like the TA's
    remoteproc_get_tlv: records that overrun the area end the walk."""
    records = []
    end = start + length
    p = start
    while p + 8 <= end:
        rtype, rlen = blob.u32(p), blob.u32(p + 4)
        p += 8
        if p + rlen > end:
            break
        records.append((rtype, p, rlen))
        p += r8(rlen)
    return records


def _tlv(blob: Blob, records: list[tuple[int, int, int]], wanted: int) -> bytes | None:
    """The value of the first non-empty record of type `wanted` (None if none)."""
    for rtype, offset, length in records:
        if rtype == wanted:
            return bytes(blob.view(offset, length)) if length else None
    return None


def _hash_entries(raw: bytes) -> list[HashEntry]:
    entries = []
    for f in HASH_ENTRY.iter_unpack(raw):
        p_type, p_offset, vaddr, paddr, filesz, memsz, _flags, _align, digest = f
        entries.append(HashEntry(p_type, p_offset, vaddr, paddr, filesz, memsz, digest))
    return entries


def _parse_legacy(blob: Blob, checks: Checks) -> SignedImage | None:
    h = blob.unpack(LEGACY_HEADER, 0)
    (_magic, version, hdr_len, sign_len, sign_off, sign_type, ph_len, ph_off, _ph_type,
     key_len, key_off, img_len, img_off, img_type) = h
    info = {"header_version": version, "hdr_length": hdr_len, "sign_len": sign_len,
            "sign_type": SIGN_TYPES.get(sign_type, f"unknown ({sign_type})"),
            "img_len": img_len, "img_offset": img_off, "img_type": img_type,
            "key_info": key_len > 0}
    signed = SignedImage(LEGACY_FORMAT)
    checks.report.signed = info  # filled in as parsing goes, shown even if it fails
    if blob.size <= hdr_len:
        _refuse(checks, "signed-header",
                f"the file is {blob.size} bytes, not more than its {hdr_len}-byte header")
        return None
    if version != 1:
        _refuse(checks, "signed-version",
                f"the signed image header has version {version}, OP-TEE knows version 1")
        return None
    if hdr_len != _legacy_header_length(sign_len, ph_len, key_len):
        _refuse(checks, "signed-header", f"the header length {hdr_len} does not match its "
                "signature, hash table and key lengths")
        return None
    for what, off, length in (("signature", sign_off, sign_len), ("key", key_off, key_len),
                              ("hash table", ph_off, ph_len)):
        if off + length > hdr_len:
            _refuse(checks, "signed-header", f"the {what} chunk lies outside the header")
            return None
    if ph_len % HASH_ENTRY_SIZE:
        _refuse(checks, "hash-table", f"the hash table is {ph_len} bytes, not a whole number "
                "of 64-byte entries")
        return None
    if sign_type not in SIGN_TYPES:
        _refuse(checks, "signature", f"the signature type {sign_type} is not supported "
                "(1 = RSA PKCS#1 v1.5, 2 = ECDSA P-256)")
        return None
    _signature_note(checks, sign_type, sign_len)
    if not blob.fits(img_off, img_len):
        _refuse(checks, "signed-header", f"the image ({img_len} bytes at offset {img_off}) "
                f"runs past the end of the {blob.size}-byte file")
        return None
    signed.hashes = _hash_entries(bytes(blob.view(ph_off, ph_len)))
    info["hash_entries"] = len(signed.hashes)
    signed.images.append((img_off, img_len))
    info["image_sizes"] = [img_len]
    return signed


def check_hashes(image: Blob, segments: list[Phdr], signed: SignedImage, label: str,
                 checks: Checks) -> None:
    """Each loadable segment against its hash-table entry (matched by p_paddr,
    as the TA does); segments outside the image are reported by the ELF checks.
    Hashing stops after twice the image's size: only overlapping segments
    (a crafted file) get there, and they must not stall the daemon."""
    entries: dict[int, HashEntry] = {}
    for e in signed.hashes:
        entries.setdefault(e.paddr, e)
    budget = 2 * image.size
    for ph in segments:
        if ph.type != PT_LOAD:
            continue
        entry = entries.get(ph.paddr)
        where = f"{label}segment {ph.index} at 0x{ph.paddr:08x}"
        if entry is None:
            _refuse(checks, "hash-missing", f"{where} has no entry in the signed hash table")
        elif (entry.type != PT_LOAD or entry.filesz != ph.filesz or entry.memsz != ph.memsz
              or (signed.format == LEGACY_FORMAT and entry.offset != ph.offset)):
            _refuse(checks, "hash-entry", f"{where} differs from its hash-table entry (type, "
                    "sizes or offset): the image was changed after signing")
        elif not ph.filesz or not image.fits(ph.offset, ph.filesz):
            continue
        elif ph.filesz > budget:
            checks.warning("hash-skipped", f"{where} and later segments overlap earlier ones; "
                           "their hashes were not checked")
            return
        else:
            budget -= ph.filesz
            if hashlib.sha256(image.view(ph.offset, ph.filesz)).digest() != entry.digest:
                _refuse(checks, "hash-mismatch", f"the SHA-256 of {where} does not match the "
                        "signed hash table: the image was changed after signing")
