"""Mutated images thrown at the validator: only findings, never an exception or a hang.

A seeded loop (reproducible: the failing case prints its seed and mutation)
mutates good ELF and signed images: bit flips, truncations, and the fields the
parsers trust most (ELF header, program and section headers, resource table
offsets, counts, vdev and vring fields, signed-image lengths). Each image is
validated from bytes of exactly its length, under a watchdog; any exception,
any "internal-error" finding (which is how a read past the end shows, see
binary.ReadPastEnd) or a hang fails the test. A hypothesis test adds
structured resource tables.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import struct
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rprocd.firmware import validate_bytes
from rprocd.firmware.binary import Blob, ReadPastEnd
from rprocd.firmware.findings import CODES
from tests.unit.test_firmware_images import (
    M0,
    M4,
    M33,
    good_image,
    rsc_table,
    sign_legacy,
    sign_tlv,
    trace,
    vdev,
    vring,
)

ITERATIONS = 40_000
WATCHDOG_S = 5  # per image: generous, only a hang reaches it
OTHER_TARGETS = [M4, M33, None, dataclasses.replace(M4, regions=None,
                                                    require_resource_table=False)]
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 20, 24, 52, 64, 127, 128, 255, 256, 512, 4096,
               0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC,
               0xFFFFFFFF]


class Hang(BaseException):  # not caught by the validator's safety net
    pass


@contextmanager
def watchdog(seconds: float):
    def fire(_signum, _frame):
        raise Hang(f"validation took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


TEE33 = dataclasses.replace(M33, fw_format="TEE", boot_vector_sections=())


def seeds() -> list[tuple[bytes, int | None, object]]:
    """(image, offset of its resource table or None, the core it is for)."""
    out = []
    for core, target in (("m4", M4), ("m33", M33), ("m0", M0)):
        built = good_image(core)
        out.append((built.data, built.sections[".resource_table"][0], target))
    built = good_image("m33")
    elf = built.data
    table_at = built.sections[".resource_table"][0]
    signed = sign_tlv(elf)
    out.append((signed, len(signed) - ((len(elf) + 7) & ~7) + table_at, TEE33))
    legacy = sign_legacy(elf)
    out.append((legacy, len(legacy) - len(elf) + table_at, TEE33))
    return out


def mutate(rng: random.Random, data: bytes, table_at: int | None) -> tuple[bytes, str]:
    out = bytearray(data)
    kind = rng.randrange(9) if len(data) >= 64 else rng.randrange(2)
    if not out:
        return bytes(rng.randbytes(rng.randrange(64))), "random bytes"
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out), "bit flips"
    if kind == 1:
        return bytes(out[:rng.randrange(len(out))]), "truncation"
    if kind == 2:  # ELF header fields (also the signed header for signed seeds)
        offset = rng.choice([4, 5, 6, 18, 24, 28, 32, 42, 44, 46, 48, 50, 8, 12, 16])
        return _put(rng, out, offset), f"header field at {offset}"
    if kind == 3:  # a program header field
        phoff, phnum = struct.unpack_from("<IH", data, 28)[0], struct.unpack_from("<H", data, 44)[0]
        offset = phoff + 32 * rng.randrange(max(phnum, 1)) + 4 * rng.randrange(8)
        return _put(rng, out, offset), f"phdr field at {offset}"
    if kind == 4:  # a section header field
        shoff, shnum = struct.unpack_from("<I", data, 32)[0], struct.unpack_from("<H", data, 48)[0]
        offset = shoff + 40 * rng.randrange(max(shnum, 1)) + 4 * rng.randrange(10)
        return _put(rng, out, offset), f"shdr field at {offset}"
    if kind in (5, 6, 7) and table_at is not None:  # resource table words
        span = 4 * rng.randrange(40)
        return _put(rng, out, table_at + span), f"table word at +{span}"
    if kind == 8:  # insert or delete bytes
        at = rng.randrange(len(out))
        if rng.random() < 0.5:
            del out[at:at + rng.randint(1, 64)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        return bytes(out), "insert/delete"
    return _put(rng, out, 4 * rng.randrange(len(out) // 4)), "random word"


def _put(rng: random.Random, out: bytearray, offset: int) -> bytes:
    if offset + 4 <= len(out):
        value = rng.choice(INTERESTING) if rng.random() < 0.8 else rng.getrandbits(32)
        if rng.random() < 0.2:
            out[offset] = value & 0xFF  # a byte field (class, nvrings, ...)
        else:
            struct.pack_into("<I", out, offset, value)
    return bytes(out)


def check(data: bytes, target) -> None:
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    report = validate_bytes(bytes(data), target)
    signal.setitimer(signal.ITIMER_REAL, 0)
    internal = [f for f in report.findings if f.code == "internal-error"]
    assert not internal, internal[0].message
    for f in report.findings:
        assert f.severity in ("error", "warning", "note") and f.message
        assert f.code in CODES, f.code
    report.to_dict()


def test_ten_thousand_mutated_images():
    rng = random.Random(0x5EED)
    pool = seeds()
    with watchdog(WATCHDOG_S):
        for i in range(ITERATIONS):
            data, table_at, target = pool[i % len(pool)]
            mutated, how = mutate(rng, data, table_at)
            if rng.random() < 0.3:  # mutations on mutations reach deeper
                mutated, how2 = mutate(rng, mutated, table_at)
                how = f"{how} + {how2}"
            if rng.random() < 0.25:  # mostly its own core, sometimes another
                target = rng.choice(OTHER_TARGETS)
            try:
                check(mutated, target)
            except BaseException as exc:
                pytest.fail(f"iteration {i} ({how}, target {target and target.core}): "
                            f"{type(exc).__name__}: {exc}")


def test_every_prefix_of_a_good_image():
    data = good_image("m33").data
    with watchdog(WATCHDOG_S):
        for n in range(len(data) + 1):
            check(data[:n], M33)


def test_blob_refuses_reads_past_the_end():
    blob = Blob(b"abcd")
    assert blob.u32(0) == 0x64636261
    for read in (lambda: blob.u32(1), lambda: blob.view(2, 3), lambda: blob.u8(4),
                 lambda: blob.view(-1, 1), lambda: blob.sub(0, 5)):
        with pytest.raises(ReadPastEnd):
            read()


u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
small = st.sampled_from([0, 1, 2, 3, 4, 16, 24, 255, 0xFFFFFFFF]) | u32


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ver=st.sampled_from([1, 1, 1, 0, 2]), num=st.one_of(st.none(), small),
       offsets=st.one_of(st.none(), st.lists(small, min_size=2, max_size=2)),
       nvrings=st.integers(0, 255), config_len=small, vnum=small, align=small,
       rtype=st.one_of(st.integers(0, 5), st.integers(120, 520), u32))
def test_structured_tables(ver, num, offsets, nvrings, config_len, vnum, align, rtype):
    entries = [vdev([vring(0x10040000, num=vnum, align=align), vring(0x10041000)],
                    nvrings=nvrings, config_len=config_len),
               struct.pack("<I", rtype) + trace(0x10020400)[4:]]
    table = rsc_table(entries, ver=ver, num=num, offsets=offsets)
    with watchdog(WATCHDOG_S):
        for target in (M4, None):
            check(good_image("m4", table=table).data, target)


def crafted_many_segments(signed: bool) -> bytes:
    """65535 PT_LOAD headers all covering the same 1 MiB of file bytes."""
    phnum = 0xFFFF
    phoff = 52
    body = 1024 * 1024
    data_at = phoff + 32 * phnum
    shoff = data_at + body
    header = (b"\x7fELF\x01\x01\x01" + bytes(9)
              + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0x80000001, phoff, shoff, 0, 52, 32,
                            phnum, 40, 1, 0))
    phdrs = b"".join(struct.pack("<8I", 1, data_at, 0x80000000 + 16 * i, 0x90000000 + 16 * i,
                                 body - i, body, 5, 4) for i in range(phnum))
    elf = header + phdrs + bytes(body) + bytes(40)
    if not signed:
        return elf
    entries = b"".join(struct.pack("<8I", 1, data_at, 0, 0x90000000 + 16 * i, body - i, body,
                                   5, 4) + bytes(32) for i in range(phnum))
    return sign_tlv(elf, hashes=entries)


@pytest.mark.parametrize("signed", [False, True])
def test_crafted_worst_cases_stay_bounded(signed):
    data = crafted_many_segments(signed)
    target = TEE33 if signed else M33
    with watchdog(30):
        signal.setitimer(signal.ITIMER_REAL, 30)
        report = validate_bytes(data, target)
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert not [f for f in report.findings if f.code == "internal-error"]
    assert len(report.findings) < 100
    assert "more-findings" in [f.code for f in report.findings]
