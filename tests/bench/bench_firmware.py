"""How long validating an image takes before `start` (64 KiB, 1 MiB, 16 MiB).

Each row: the median of several `validate_file` runs (one read of the file,
all checks; signed images also hash every segment). The `kernel_ms` column is
the emulated kernel's own checks of the same plain ELF (sanity check and
segment walk, rprocd/sim/loader.py) when that module offers them: the cost
the daemon adds is the difference. Run: `python -m tests.bench.bench_firmware`.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rprocd.firmware import validate_file
from tests.unit.test_firmware_images import M33, good_image, sign_tlv

SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1024 * 1024, "16 MiB": 16 * 1024 * 1024}
RUNS = {"64 KiB": 21, "1 MiB": 11, "16 MiB": 5}
HEADROOM = 1024  # the signed header, TLVs and signature: files stay within 16 MiB
TEE = dataclasses.replace(M33, fw_format="TEE", boot_vector_sections=())


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _kernel_checks() -> Callable[[bytes], None] | None:
    """The emulated kernel's checks of a plain ELF, if its loader exposes them."""
    try:
        from rprocd.sim import loader
    except ImportError:
        return None
    if hasattr(loader, "load_firmware"):
        return loader.load_firmware
    if hasattr(loader, "sanity_check") and hasattr(loader, "load_segments"):
        def checks(data: bytes) -> None:
            loader.sanity_check(data)
            loader.load_segments(data, lambda _da, _memsz, _bytes: True)
        return checks
    return None


def run() -> list[dict]:
    kernel = _kernel_checks()
    rows = []
    overhead = len(good_image("m33", text_size=0).data) + HEADROOM
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            elf = good_image("m33", text_size=size - overhead).data
            for kind, data, target in (("ELF", elf, M33), ("TEE-TLV", sign_tlv(elf), TEE)):
                path = Path(tmp) / f"{kind}-{label.replace(' ', '')}.bin"
                path.write_bytes(data)
                report = validate_file(path, target)
                assert not report.errors, report.errors
                row = {"image": f"{kind} {label}", "size": len(data), "runs": RUNS[label],
                       "validate_ms": _median_ms(lambda p=path, t=target: validate_file(p, t),
                                                 RUNS[label]),
                       "kernel_ms": None}
                if kernel is not None and kind == "ELF":
                    row["kernel_ms"] = _median_ms(lambda d=data: kernel(d), RUNS[label])
                rows.append(row)
    for row in rows:
        kernel_ms = "-" if row["kernel_ms"] is None else f"{row['kernel_ms']:.3f}"
        print(f"firmware validate {row['image']:<16} {row['size']:>9} B  "
              f"{row['validate_ms']:>9.3f} ms  kernel {kernel_ms} ms  (median of {row['runs']})")
    return rows


if __name__ == "__main__":
    run()
