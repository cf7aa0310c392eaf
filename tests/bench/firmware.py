"""How long validating an image takes before `start` (64 KiB, 1 MiB, 16 MiB).

Each row: `validate_file` (one read of the file, all checks; signed images
also hash every segment) beside the emulated kernel's own checks of the same
plain ELF (sanity check and segment walk, rprocd/sim/loader.py): the cost the
daemon adds before the kernel sees the image. (Formerly bench_firmware.py.)
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rprocd.firmware import validate_file
from tests.unit.test_firmware_images import M33, good_image, sign_tlv

from .common import Figure, Stats

SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1024 * 1024, "16 MiB": 16 * 1024 * 1024}
RUNS = {"64 KiB": 21, "1 MiB": 11, "16 MiB": 5}
HEADROOM = 1024  # the signed header, TLVs and signature: files stay within 16 MiB
TEE = dataclasses.replace(M33, fw_format="TEE", boot_vector_sections=())


def _times_ms(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _kernel_checks() -> Callable[[bytes], None]:
    """The emulated kernel's checks of a plain ELF."""
    from rprocd.sim import loader

    def checks(data: bytes) -> None:
        loader.sanity_check(data)
        loader.load_segments(data, lambda _da, _memsz, _bytes: True)

    return checks


def run() -> list[Figure]:
    kernel = _kernel_checks()
    figures = []
    overhead = len(good_image("m33", text_size=0).data) + HEADROOM
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            elf = good_image("m33", text_size=size - overhead).data
            for kind, data, target in (("ELF", elf, M33), ("TEE-TLV", sign_tlv(elf), TEE)):
                path = Path(tmp) / f"{kind}-{label.replace(' ', '')}.bin"
                path.write_bytes(data)
                report = validate_file(path, target)
                assert not report.errors, report.errors
                runs = RUNS[label]
                fig = Figure("firmware", f"validate {kind} {label}",
                             Stats.of(_times_ms(lambda p=path, t=target: validate_file(p, t),
                                                runs)),
                             extra={"size": len(data), "runs": runs})
                if kind == "ELF":
                    fig.baseline = Stats.of(_times_ms(lambda d=data: kernel(d), runs))
                    fig.note = "baseline: the emulated kernel's ELF checks of the same image"
                else:
                    fig.baseline_text = "- (OP-TEE verifies)"
                figures.append(fig)
    return figures
