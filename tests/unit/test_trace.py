"""Trace buffers: new lines from ring-buffer snapshots, priorities, forwarding."""

from __future__ import annotations

import logging

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rprocd import trace
from rprocd.sim.behaviour import TraceRing
from rprocd.trace import TraceFollower, forward, parse_priority

# -- models of the firmware writers --------------------------------------------


class StRing:
    """ST/OpenAMP `log_buff`: wrap check first, then the byte, then a NUL after it."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.off = 0

    def wraps_next(self) -> bool:
        return self.off + 1 >= len(self.mem)

    def putc(self, ch: int) -> None:
        if self.wraps_next():
            self.off = 0
        self.mem[self.off] = ch
        self.mem[self.off + 1] = 0
        self.off += 1

    def read(self) -> bytes:  # the kernel: up to the first NUL
        return bytes(self.mem).split(b"\0", 1)[0]


class NoNulRing:
    """Zephyr `ram_console`: no NUL after the text, the last byte stays NUL."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.pos = 0

    def putc(self, ch: int) -> None:
        self.mem[self.pos] = ch
        self.pos = (self.pos + 1) % (len(self.mem) - 1)

    def read(self) -> bytes:
        return bytes(self.mem).split(b"\0", 1)[0]


# Unique, non-empty lines: "[i]" then text without newline, NUL or brackets.
_TEXT = st.text(alphabet="ab <>3xé\t", max_size=20)


def _numbered(texts: list[str]) -> list[str]:
    return [f"[{i}]{t}" for i, t in enumerate(texts)]


# -- property tests ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=60),
    size=st.integers(min_value=12, max_value=96),
    reads=st.lists(st.booleans(), min_size=1, max_size=200),
)
def test_nul_terminated_ring_yields_exactly_the_lines_written(
    texts: list[str], size: int, reads: list[bool]
) -> None:
    """Frequent enough for a NUL-terminated ring: at most half a lap between
    reads, and one read between a lap's last byte and the wrap (the window in
    which the whole lap is visible)."""
    lines = _numbered(texts)
    ring, follower, out = StRing(size), TraceFollower(), []
    since = 0
    for i, ch in enumerate("".join(line + "\n" for line in lines).encode()):
        if ring.wraps_next():
            out += follower.feed(ring.read())
        ring.putc(ch)
        since += 1
        if reads[i % len(reads)] or since >= (size - 1) // 2:
            out += follower.feed(ring.read())
            since = 0
    out += follower.feed(ring.read())
    assert out == lines


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=60),
    size=st.integers(min_value=12, max_value=96),
    reads=st.lists(st.booleans(), min_size=1, max_size=200),
    known_size=st.booleans(),
)
def test_ring_without_nul_yields_exactly_the_lines_written(
    texts: list[str], size: int, reads: list[bool], known_size: bool
) -> None:
    """No NUL after the text: at most half a lap between reads. A byte that
    rewrites an identical byte is invisible until the next change, so the
    condition is on what the reader can see: less than a lap between the last
    visible change before one read and the last one before the next (a final
    line of characters never used before releases the last bytes)."""
    lines = _numbered(texts)
    ring = NoNulRing(size)
    lap = size - 1
    follower = TraceFollower(size=size if known_size else None)
    out: list[str] = []
    since, seen_upto, last_change = 0, 0, -1
    stream = ("".join(line + "\n" for line in lines) + "\x01\x01\n").encode()
    for i, ch in enumerate(stream):
        if ring.mem[ring.pos] != ch:
            last_change = i
        ring.putc(ch)
        since += 1
        if reads[i % len(reads)] or since >= lap // 2 or i == len(stream) - 1:
            assume(last_change + 1 - seen_upto < lap)
            out += follower.feed(ring.read())
            since, seen_upto = 0, last_change + 1
    assert out[: len(lines)] == lines
    assert out[len(lines):] in ([], ["\x01\x01"])


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=60),
    size=st.integers(min_value=12, max_value=64),
    reads=st.lists(st.booleans(), min_size=1, max_size=50),
)
def test_rare_reads_of_a_nul_terminated_ring_lose_text_but_never_repeat_a_line(
    texts: list[str], size: int, reads: list[bool]
) -> None:
    lines = _numbered(texts)
    ring, follower, out = StRing(size), TraceFollower(), []
    for i, ch in enumerate("".join(line + "\n" for line in lines).encode()):
        ring.putc(ch)
        if reads[i % len(reads)] and i % 7 == 0:
            out += follower.feed(ring.read())
    out += follower.feed(ring.read())
    exact = [line for line in out if line in lines]
    assert len(exact) == len(set(exact))


def test_the_emulators_ring_loses_only_lines_crossing_a_lap_end() -> None:
    """rprocd/sim's TraceRing puts the NUL at offset 0 right after a lap's last
    byte, so no read ever shows the end of a lap: a line crossing it comes out
    as its tail only (ST's log_buff keeps the full lap visible until the next
    byte). Every other line comes out once, in order."""
    size = 64
    mem = bytearray(size)

    def write(addr: int, data: bytes) -> bool:
        mem[addr:addr + len(data)] = data
        return True

    ring = TraceRing(write, 0, size)
    follower, out, crossing = TraceFollower(), [], set()
    lines = [f"[{i}] tick {i * 7}" for i in range(40)]
    for i, line in enumerate(lines):
        start = ring.offset
        ring.put(line + "\n")
        if ring.offset <= start:
            crossing.add(i)
        out += follower.feed(bytes(mem).split(b"\0", 1)[0])
    assert crossing  # the test covers several wraps
    expected_whole = [line for i, line in enumerate(lines) if i not in crossing]
    assert [line for line in out if line in lines and line in expected_whole] == expected_whole
    for i in crossing:
        tails = [o for o in out if lines[i].endswith(o) and o not in lines]
        assert len(tails) <= 1


# -- single cases --------------------------------------------------------------


def test_growth_emits_the_new_suffix_and_holds_a_partial_line() -> None:
    f = TraceFollower()
    assert f.feed(b"boot\nhal") == ["boot"]
    assert f.feed(b"boot\nhal") == []
    assert f.feed(b"boot\nhalf done\nx") == ["half done"]
    assert f.feed(b"boot\nhalf done\nxy\n") == ["xy"]


def test_a_nul_in_the_snapshot_ends_the_text() -> None:
    f = TraceFollower()
    assert f.feed(b"one\ntwo\n\0old stuff\n") == ["one", "two"]


def test_crlf_and_empty_lines() -> None:
    f = TraceFollower()
    assert f.feed(b"a\r\n\n  \nb\n") == ["a", "b"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert TraceFollower().feed(b"\xff\xfe ok\n") == ["\ufffd\ufffd ok"]


def test_nul_wrap_joins_the_line_across_the_wrap() -> None:
    f = TraceFollower()
    assert f.feed(b"first\nsecond\nthi") == ["first", "second"]
    # the firmware wrapped: offset 0 onwards, NUL after; the old lap is hidden
    assert f.feed(b"rd\nfou") == ["third"]
    assert f.feed(b"rd\nfourth\n") == ["fourth"]


def test_ring_without_nul_takes_the_changed_bytes_in_order() -> None:
    f = TraceFollower()
    assert f.feed(b"aaaa\nbbbb\ncccc\n") == ["aaaa", "bbbb", "cccc"]
    # full buffer (15 bytes); "dd\nee" overwrote offsets 0..4 in place
    assert f.feed(b"dd\neebbbb\ncccc\n") == ["dd"]
    assert f.feed(b"dd\neeff\nb\ncccc\n") == ["eeff"]
    # crossing the end of the buffer
    # "ij\n" went to offsets 0..2; that "\n" rewrote a "\n", so it is not seen yet
    assert f.feed(b"ij\neeff\ngg\nhhhh") == ["gg"]
    assert f.feed(b"ij\nkkff\ngg\nhhhh") == ["hhhhij"]  # the next change releases it
    assert f.text() == b"ff\ngg\nhhhhij\nkk"


def test_restart_by_reset_emits_the_orphan_and_starts_afresh() -> None:
    f = TraceFollower()
    assert f.feed(b"banner\nlast words") == ["banner"]
    assert f.reset() == ["last words"]
    # same firmware again: identical text is new text after reset()
    assert f.feed(b"banner\n") == ["banner"]


def test_shorter_unrelated_content_is_taken_as_new() -> None:
    f = TraceFollower()
    f.feed(b"old firmware line one\nold firmware line two\n")
    assert f.feed(b"new fw\n") == ["new fw"]


def test_restart_of_a_ring_without_nul_is_detected_by_the_length() -> None:
    f = TraceFollower(size=16)
    f.feed(b"0123456789abcd\n")  # 15 bytes: a full no-NUL buffer
    assert f.feed(b"X123456789abcd\n") == []  # in place, line not finished
    assert f.feed(b"boot\n") == ["X", "boot"]  # cleared: the fragment, then the new run


def test_prime_takes_the_buffer_as_seen() -> None:
    f = TraceFollower()
    f.prime(b"old one\nold two\n")
    assert f.feed(b"old one\nold two\nnew\n") == ["new"]


def test_prime_on_a_full_ring_starts_at_the_first_change() -> None:
    f = TraceFollower()
    f.prime(b"aaaa\nbbbb\ncccc\n")
    assert f.feed(b"aaaa\nxx\nb\ncccc\n") == ["xx"]


def test_kernel_placeholder_is_not_a_log_line() -> None:
    f = TraceFollower()
    assert f.feed(b"Trace  not available\n") == []
    assert f.feed(b"real\n") == ["real"]


def test_a_line_without_newline_is_cut_at_max_line() -> None:
    f = TraceFollower(max_line=8)
    assert f.feed(b"0123456789") == ["0123456789"]
    assert f.feed(b"0123456789ab\n") == ["ab"]


def test_text_is_the_last_snapshot_oldest_first() -> None:
    f = TraceFollower()
    f.feed(b"abc\n")
    assert f.text() == b"abc\n"
    f.reset()
    assert f.text() == b""


# -- priorities and forwarding -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("<3>disk on fire", (3, "disk on fire")),
        ("<0>", (0, "")),
        ("<7> debug", (7, " debug")),
        ("<8>not a priority", (6, "<8>not a priority")),
        ("<12>no", (6, "<12>no")),
        ("plain", (6, "plain")),
        (" <3>indented", (6, " <3>indented")),
        ("[00:00:01.234,000] <err> main: boom", (3, "[00:00:01.234,000] <err> main: boom")),
        ("<wrn> low", (4, "<wrn> low")),
        ("<dbg> x", (7, "<dbg> x")),
    ],
)
def test_parse_priority(line: str, expected: tuple[int, str]) -> None:
    assert parse_priority(line) == expected


def test_forward_to_the_journal_under_the_cores_identifier() -> None:
    sent: list[tuple[str, ...]] = []
    forward(["<4>low battery", "hello"], "m4", "remoteproc0", sendv=lambda *a: sent.append(a))
    assert sent == [
        ("MESSAGE=low battery", "PRIORITY=4", "SYSLOG_IDENTIFIER=m4", "RPROC_NAME=m4",
         "RPROC_DEVICE=remoteproc0"),
        ("MESSAGE=hello", "PRIORITY=6", "SYSLOG_IDENTIFIER=m4", "RPROC_NAME=m4",
         "RPROC_DEVICE=remoteproc0"),
    ]


def test_forward_without_journald_goes_through_logging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(trace, "journal_sendv", lambda: None)
    caplog.set_level(logging.DEBUG, logger="rprocd.trace.m4")
    logging.getLogger("rprocd").propagate = True  # journal.setup() may have cut it
    forward(["<3>bad", "<7>detail", "fine"], "m4", "remoteproc0")
    got = [(r.name, r.levelno, r.getMessage(), r.RPROC_NAME, r.RPROC_DEVICE)  # type: ignore[attr-defined]
           for r in caplog.records]
    assert got == [
        ("rprocd.trace.m4", logging.ERROR, "m4: bad", "m4", "remoteproc0"),
        ("rprocd.trace.m4", logging.DEBUG, "m4: detail", "m4", "remoteproc0"),
        ("rprocd.trace.m4", logging.INFO, "m4: fine", "m4", "remoteproc0"),
    ]


def test_journal_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    trace.journal_sendv.cache_clear()
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr(trace, "JOURNAL_SOCKET", "/nonexistent/socket")
    try:
        assert trace.journal_sendv() is None
        trace.journal_sendv.cache_clear()
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
        from systemd import journal

        assert trace.journal_sendv() is journal.sendv
    finally:
        trace.journal_sendv.cache_clear()
