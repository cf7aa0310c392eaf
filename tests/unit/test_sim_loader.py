"""The emulated loader (ABI §5, §6, §7.3/7.4) on synthetic bytes and on the
built test firmware, plus the behaviour script parser."""

from __future__ import annotations

import errno
import struct
import sys
from pathlib import Path

import pytest
from test_sim_fakes import (
    build_elf,
    carveout,
    m4_image,
    m4_table,
    rsa_key,
    rsc_table,
    script,
    sign_image,
    trace,
    vdev,
    write_public_key,
)
from test_sim_kernel import Sim

from rprocd.sim import loader
from rprocd.sim.behaviour import Behaviour, parse_behaviour
from rprocd.sim.loader import KernelError


def _err(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(KernelError) as e:
        fn(*args, **kw)
    return e.value.errno, e.value.message


# --------------------------------------------------------- request_firmware


def test_request_firmware_search_order_and_errors(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "fw").write_bytes(b"second")
    (b / "sub").mkdir()
    (b / "sub" / "x").write_bytes(b"nested")
    assert loader.request_firmware("fw", [str(a), str(b)]).data == b"second"
    (a / "fw").write_bytes(b"first")
    fw = loader.request_firmware("fw", ["", str(a), str(b)])
    assert (fw.data, fw.path) == (b"first", f"{a}/fw")
    assert loader.request_firmware("sub/x", [str(a), str(b)]).data == b"nested"
    assert loader.request_firmware("/fw", [str(a)]).data == b"first"  # dir + "/" + name
    assert _err(loader.request_firmware, "nope", [str(a), str(b)])[0] == errno.ENOENT
    for bad in ("", "..", "../fw", "sub/../fw", "sub/.."):
        assert _err(loader.request_firmware, bad, [str(a)])[0] == errno.EINVAL
    (a / "empty").write_bytes(b"")
    assert _err(loader.request_firmware, "empty", [str(a)])[0] == errno.EINVAL
    assert _err(loader.request_firmware, "sub", [str(b)])[0] == errno.EINVAL  # a directory
    assert _err(loader.request_firmware, "empty", [str(a), str(b)])[0] == errno.ENOENT  # last
    long = "n" * (4096 - len(str(a)) - 1)
    assert _err(loader.request_firmware, long, [str(a), str(b)])[0] == errno.ENAMETOOLONG
    assert _err(loader.request_firmware, long[:-1], [str(a)])[0] in (errno.ENOENT,
                                                                      errno.ENAMETOOLONG)


def test_dotdot_only_as_a_component():
    assert loader.name_contains_dotdot("a/../b")
    assert not loader.name_contains_dotdot("a..b")
    assert not loader.name_contains_dotdot("..a")
    assert not loader.name_contains_dotdot("a/..b/c")


# --------------------------------------------------------------- sanity


def _patch(data: bytes, off: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<" + fmt, buf, off, value)
    return bytes(buf)


GOOD = m4_image()


@pytest.mark.parametrize("image,message", [
    (GOOD[:51], "Image is too small"),
    (b"\x7fELG" + GOOD[4:], "Image is corrupted (bad magic)"),
    (GOOD[:4] + b"\x03" + GOOD[5:], "Unsupported class: 3"),
    (GOOD[:4] + b"\x02" + GOOD[5:60], "elf64 header is too small"),
    (GOOD[:5] + b"\x02" + GOOD[6:], "Unsupported firmware endianness"),
    (_patch(GOOD, 32, "I", len(GOOD) - 39), "Image is too small"),
    (_patch(GOOD, 44, "H", 0), "No loadable segments"),
    (_patch(GOOD, 28, "I", len(GOOD) + 1), "Firmware size is too small"),
])
def test_sanity_check_steps_in_order(image, message):
    assert _err(loader.sanity_check, image) == (errno.EINVAL, message)


def test_sanity_check_accepts_what_the_kernel_does_not_check():
    loader.sanity_check(GOOD)
    loader.sanity_check(_patch(GOOD, 18, "H", 62))  # e_machine x86-64
    loader.sanity_check(_patch(GOOD, 16, "H", 1))  # ET_REL
    loader.sanity_check(_patch(GOOD, 28, "I", len(GOOD)))  # e_phoff == size is fine
    loader.sanity_check(build_elf(table=m4_table(), cls64=True))


# ------------------------------------------------------------- tables


def test_find_table_checks():
    sh = loader.find_table(GOOD)
    assert GOOD[sh.offset:sh.offset + sh.size] == m4_table() and sh.addr == 0x10030000
    cases = [
        (build_elf(table=None), "no resource table found"),
        (build_elf(table=b"\1\0\0\0" * 3), "header-less resource table"),
        (build_elf(table=rsc_table([], ver=2)), "unsupported fw ver: 2"),
        (build_elf(table=rsc_table([], reserved=(0, 1))), "non zero reserved bytes"),
        (build_elf(table=rsc_table([trace(0, 16)], num=20)), "resource table incomplete"),
    ]
    for image, message in cases:
        assert _err(loader.find_table, image) == (errno.EINVAL, message)
    cut = bytearray(GOOD)
    sh_pos = struct.unpack_from("<I", GOOD, 32)[0]
    # grow the table section past the end of the file
    for i in range(struct.unpack_from("<H", GOOD, 48)[0]):
        o = sh_pos + 40 * i
        if struct.unpack_from("<I", GOOD, o + 20)[0] == sh.size and \
                struct.unpack_from("<I", GOOD, o + 16)[0] == sh.offset:
            struct.pack_into("<I", cut, o + 20, len(GOOD))
    assert _err(loader.find_table, bytes(cut)) == (errno.EINVAL, "resource table truncated")


def test_format_table_text():
    table = rsc_table([carveout(0x10000000, 0x1000, "mcuram", pa=0x30000000, flags=3),
                       trace(0x10020000, 0x1000),
                       vdev([(0x10040000, 16, 16)]),
                       struct.pack("<I", 7)])
    assert loader.format_table(table) == (
        "Entry 0 is of type carveout\n"
        "  Device Address 0x10000000\n  Physical Address 0x30000000\n"
        "  Length 0x1000 Bytes\n  Flags 0x3\n  Reserved (should be zero) [0]\n"
        "  Name mcuram\n\n"
        "Entry 1 is of type trace\n"
        "  Device Address 0x10020000\n  Length 0x1000 Bytes\n"
        "  Reserved (should be zero) [0]\n  Name trace0\n\n"
        "Entry 2 is of type vdev\n"
        "  ID 7\n  Notify ID 0\n  Device features 0x1\n  Guest features 0x0\n"
        "  Config length 0x0\n  Status 0x0\n  Number of vrings 1\n"
        "  Reserved (should be zero) [0][0]\n\n"
        "  Vring 0\n    Device Address 0x10040000\n    Alignment 16\n"
        "    Number of buffers 16\n    Notify ID 0\n    Physical Address 0x0\n\n"
        "Unknown resource type found: 7 [hdr: 0000000000000000]\n"
    )
    assert loader.format_table(None) == "No resource table found\n"


def test_vring_size_matches_virtio_ring_h():
    assert loader.vring_size(16, 16) == 4096
    assert loader.vring_size(256, 4096) == 3 * 4096


# ------------------------------------------------------------ segments


def _load(image: bytes, ok=lambda da, n: True, **kw) -> list[tuple[int, int, bytes]]:
    done: list[tuple[int, int, bytes]] = []

    def write(da: int, memsz: int, body: bytes) -> bool:
        if not ok(da, memsz):
            return False
        done.append((da, memsz, body))
        return True

    loader.load_segments(image, write, **kw)
    return done


def test_load_segments_uses_paddr_and_skips_non_load():
    image = build_elf(loads=[(0x10000000, b"abc", 8)], table=None)
    image = _patch(image, 52 + 8, "I", 0x20000000)  # p_vaddr differs from p_paddr
    assert _load(image) == [(0x10000000, 8, b"abc")]
    note = _patch(image, 52, "I", 4)  # PT_NOTE
    assert _load(note) == []


def test_load_segment_errors():
    base = build_elf(loads=[(0x10000000, b"abcd", 8)], table=None)
    big = _patch(base, 52 + 16, "I", 9)  # filesz > memsz
    assert _err(_load, big) == (errno.EINVAL, "bad phdr filesz 0x9 memsz 0x8")
    trunc = _patch(base, 52 + 4, "I", len(base) - 2)
    assert _err(_load, trunc)[0] == errno.EINVAL
    assert "truncated fw" in _err(_load, trunc)[1]
    assert _err(_load, base, ok=lambda da, n: False) == (errno.EINVAL,
                                                         "bad phdr da 0x10000000 mem 0x8")
    empty = build_elf(loads=[(0x90000000, b"", 0)], table=None)
    assert _load(empty) == []
    assert _err(_load, empty, skip_empty=False)[0] == errno.EINVAL
    huge = build_elf(loads=[(0x10000000, b"", 1 << 33)], table=None, cls64=True)
    assert _err(_load, huge, host_bits=32)[0] == errno.EOVERFLOW
    assert _load(huge, host_bits=64) == [(0x10000000, 1 << 33, b"")]


def test_describe_reads_behaviour_table_and_vector():
    image = build_elf(table=m4_table(), behaviour=script(boot_ms=7),
                      sections=[(".isr_vectors", 0x80000000, b"v" * 8)])
    info = loader.describe(image)
    assert info.behaviour is not None and parse_behaviour(info.behaviour)[0].boot_ms == 7
    assert info.table == m4_table() and info.table_addr == 0x10030000
    assert info.boot_vector == 0x80000000 and info.entry == 0x10000001
    assert loader.first_trace(info.table) == (0x10020000, 0x1000)


# ------------------------------------------------------------- behaviour


def test_behaviour_parse():
    assert parse_behaviour(None) == (Behaviour(), [])
    beh, warnings = parse_behaviour(
        b"boot_ms=5\nshutdown_ack_ms=-1\ntrace=a %n\ntrace=b\n# c\n\nrpmsg=x, y\n"
        b"crash_after_ms=0x10\nbogus=1\nboot_ms=z\nnoequal\n\0trace=after nul")
    assert beh == Behaviour(boot_ms=5, shutdown_ack_ms=-1, trace=("a %n", "b"),
                            crash_after_ms=16, rpmsg=("x", "y"))
    assert len(warnings) == 3
    assert parse_behaviour(b"rpmsg=\n")[0].rpmsg == ()


# ------------------------------------------------------------------ TEE


@pytest.fixture
def key(tmp_path) -> str:
    return str(write_public_key(tmp_path / "pub.pem"))


def _fits(da: int, n: int) -> bool:
    return 0x10000000 <= da and da + n <= 0x10040000 or da + n <= 0x10000


def test_tee_good_image(key):
    t = loader.tee_authenticate(sign_image(GOOD), key, _fits)
    assert t.table == m4_table() and t.table_addr == 0x10030000
    assert [da for da, _, _ in t.segments] == [0, 0x10000000, 0x10020000, 0x10030000]
    assert t.behaviour is not None and t.entry == 0x10000001


@pytest.mark.parametrize("corrupt,words", [
    ("magic", "bad magic"), ("version", "unsupported version"), ("size", "file size"),
    ("signature", "signature verification failed"), ("hash", "hash mismatch"),
])
def test_tee_rejections_are_eio(key, corrupt, words):
    e, message = _err(loader.tee_authenticate, sign_image(GOOD, corrupt=corrupt), key, _fits)
    assert e == errno.EIO and words in message


def test_tee_other_rejections(key, tmp_path):
    assert _err(loader.tee_authenticate, GOOD, key, _fits)[0] == errno.EIO  # plain ELF
    assert _err(loader.tee_authenticate, sign_image(GOOD), None, _fits)[0] == errno.EIO
    assert _err(loader.tee_authenticate, sign_image(GOOD), key, lambda da, n: False)[0] \
        == errno.EIO
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    other = str(write_public_key(tmp_path / "other.pem",
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert _err(loader.tee_authenticate, sign_image(GOOD), other, _fits)[0] == errno.EIO
    eckey = ec.generate_private_key(ec.SECP256R1())
    ecpub = str(write_public_key(tmp_path / "ec.pem", eckey))
    loader.tee_authenticate(sign_image(GOOD, ecdsa_key=eckey), ecpub, _fits)
    assert _err(loader.tee_authenticate, sign_image(GOOD, ecdsa_key=eckey), key, _fits)[0] \
        == errno.EIO
    assert rsa_key() is not None


def test_tee_core_boot(tmp_path, key):
    s = Sim(tmp_path, options=["fw_format=TEE", f"tee_key={key}"],
            firmware={"rproc-m4-fw": sign_image(m4_image()), "plain.elf": m4_image(),
                      "bad.bin": sign_image(m4_image(), corrupt="signature")})
    try:
        s.write("state", "start")
        assert s.state() == "running" and s.dev.names("virtio") == ["virtio0"]
        s.dbg.write("remoteproc/remoteproc0/crash", "1")  # recovery re-authenticates
        from test_sim_fakes import wait_until

        wait_until(lambda: sum("now up" in x for x in s.k.log) == 2)
        s.write("state", "stop")
        for name in ("plain.elf", "bad.bin"):
            s.write("firmware", name)
            assert s.err("state", "start") == errno.EIO
    finally:
        s.k.shutdown()


def test_signed_image_on_elf_core_is_bad_magic(tmp_path, key):
    s = Sim(tmp_path, firmware={"rproc-m4-fw": sign_image(m4_image())})
    try:
        assert s.err("state", "start") == errno.EINVAL
        assert any("bad magic" in x for x in s.k.log)
    finally:
        s.k.shutdown()


# ------------------------------------------------------- built fixtures

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
sys.path.insert(0, str(FIRMWARE.parent.parent))
try:
    from tests.firmware.fixtures import FIXTURES, PUBLIC_KEY
except ImportError:  # pragma: no cover - the firmware teammate's module
    FIXTURES, PUBLIC_KEY = {}, None

_BOARD = {"m4": ("stm32mp157f-dk", "remoteproc0"), "m33": ("stm32mp257f-dk", "remoteproc0"),
          "m0": ("stm32mp257f-dk", "remoteproc1")}


def _start(tmp: Path, fixture, board: str, rp: str, options: list[str]) -> int | None:
    s = Sim(tmp, board=board, options=options, firmware={})
    (s.dir / fixture.name).symlink_to(fixture.path)
    try:
        s.write("firmware", fixture.name, rp)
        try:
            s.write("state", "start", rp)
        except OSError as e:
            return e.errno
        assert s.state(rp) == "running"
        s.write("state", "stop", rp)
        return None
    finally:
        s.k.shutdown()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_built_fixture_errnos(tmp_path, name):
    fixture = FIXTURES[name]
    assert fixture.path.exists(), "run `make -C tests/firmware` first"
    board, rp = _BOARD[fixture.core]
    assert _start(tmp_path / "stm", fixture, board, rp, []) == fixture.kernel_errno
    assert _start(tmp_path / "gen", fixture, "generic:1", "remoteproc0", []) \
        == fixture.generic_errno
    tee = ["fw_format=TEE", f"tee_key={PUBLIC_KEY}"]
    assert _start(tmp_path / "tee", fixture, board, rp, tee) == fixture.tee_errno


# The big-endian image is left out: the kernel refuses it before reading sections.
@pytest.mark.parametrize(
    "name", sorted(n for n, f in FIXTURES.items() if f.sim and n != "bad-big-endian.elf")
)
def test_built_fixture_behaviour_sections_parse(name):
    fixture = FIXTURES[name]
    assert fixture.path.exists(), "run `make -C tests/firmware` first"
    data = fixture.path.read_bytes()
    raw = loader.describe(data).behaviour
    beh, warnings = parse_behaviour(raw)
    assert warnings == []
    for key, value in fixture.sim.items():
        got = getattr(beh, key)
        assert (",".join(got) if key == "rpmsg" else str(got)) == value, key
