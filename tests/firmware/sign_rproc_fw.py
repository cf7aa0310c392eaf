#!/usr/bin/env python3
"""Sign a remote processor firmware for the OP-TEE remoteproc TA (TLV format).

    sign_rproc_fw.py --key KEY.pem --in FIRMWARE.elf --out FIRMWARE.bin

Layout (remoteproc-abi.md §7.4; OP-TEE scripts/sign_rproc_fw.py):

    header   magic 0x3543A468, version 1, tlv_len, sign_len, img_len (u32 LE)
    TLVs     SIGNTYPE, HASHTYPE, NUM_IMG, IMGTYPE, IMGSIZE, HASHTABLE,
             each record (u32 type, u32 length, value) padded to 8 bytes
    sign     RSASSA-PKCS1-v1.5 / SHA-256 over header || TLV area
    image    the ELF file, padded to 8 bytes

The hash table holds, for each PT_LOAD segment, its Elf32_Phdr and the
SHA-256 of its file bytes. Only 32-bit little-endian ARM ELF files are
accepted, as by the OP-TEE tool. Needs `cryptography`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MAGIC = 0x3543A468
VERSION = 1
EM_ARM = 40
PT_LOAD = 1

TLV_SIGNTYPE = 0x01
TLV_HASHTYPE = 0x02
TLV_NUM_IMG = 0x03
TLV_IMGTYPE = 0x04
TLV_IMGSIZE = 0x05
TLV_HASHTABLE = 0x10

SIGNTYPE_RSA_PKCS1_SHA256 = 1
HASHTYPE_SHA256 = 1
IMGTYPE_ELF = 1


def pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def tlv(kind: int, value: bytes) -> bytes:
    return pad8(struct.pack("<II", kind, len(value)) + value)


def hash_table(elf: bytes) -> bytes:
    """Elf32_Phdr + SHA-256 of the segment's file bytes, for each PT_LOAD."""
    if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
        sys.exit("sign_rproc_fw: only 32-bit little-endian ELF images can be signed")
    (machine,) = struct.unpack_from("<H", elf, 18)
    if machine != EM_ARM:
        sys.exit(f"sign_rproc_fw: machine {machine} is not ARM")
    phoff, phentsize, phnum = (struct.unpack_from("<I", elf, 28)[0],
                               *struct.unpack_from("<HH", elf, 42))
    table = b""
    for i in range(phnum):
        phdr = elf[phoff + i * phentsize:phoff + i * phentsize + 32]
        p_type, p_offset, _, _, p_filesz = struct.unpack_from("<5I", phdr)
        if p_type != PT_LOAD:
            continue
        if p_offset + p_filesz > len(elf):
            sys.exit("sign_rproc_fw: segment beyond the end of the file")
        table += phdr + hashlib.sha256(elf[p_offset:p_offset + p_filesz]).digest()
    if not table:
        sys.exit("sign_rproc_fw: no PT_LOAD segment")
    return table


def sign(elf: bytes, key: rsa.RSAPrivateKey) -> bytes:
    image = pad8(elf)
    tlvs = b"".join([
        tlv(TLV_SIGNTYPE, bytes([SIGNTYPE_RSA_PKCS1_SHA256])),
        tlv(TLV_HASHTYPE, bytes([HASHTYPE_SHA256])),
        tlv(TLV_NUM_IMG, bytes([1])),
        tlv(TLV_IMGTYPE, bytes([IMGTYPE_ELF])),
        tlv(TLV_IMGSIZE, struct.pack("<I", len(image))),
        tlv(TLV_HASHTABLE, hash_table(elf)),
    ])
    sign_len = key.key_size // 8
    header = struct.pack("<5I", MAGIC, VERSION, len(tlvs), sign_len, len(image))
    signature = key.sign(header + tlvs, padding.PKCS1v15(), hashes.SHA256())
    assert len(signature) == sign_len
    return header + tlvs + pad8(signature) + image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True, help="RSA private key (PEM)")
    parser.add_argument("--in", dest="input", required=True, help="firmware ELF file")
    parser.add_argument("--out", required=True, help="signed image to write")
    args = parser.parse_args(argv)

    with open(args.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        sys.exit("sign_rproc_fw: the key is not an RSA private key")
    with open(args.input, "rb") as f:
        elf = f.read()

    data = sign(elf, key)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
