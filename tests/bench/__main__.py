"""`make bench`: every figure of issue 8 in one run, one table, one JSON file.

    python -m tests.bench [--json PATH] [--markdown] [--only TOPIC,...]
    python -m tests.bench --from-json bench-results.json   # the README's table again

Each topic module (lifecycle, crash, load, coldstart, footprint, scale,
firmware) brings up its own emulated board, measures rprocd and its baseline
in the same run, and returns `Figure`s. The table has one row per figure:
rprocd and baseline as median / worst, their ratio, the target of the issue
and whether it is met (with the reason when not). `--markdown` prints the
table as the README shows it, so the README is regenerated, not typed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .common import Figure

REPO = Path(__file__).resolve().parents[2]
TOPICS = ("lifecycle", "crash", "load", "coldstart", "footprint", "scale", "firmware")
HEADER = ("figure", "rprocd (median / worst)", "baseline", "ratio", "target", "verdict")


def machine() -> dict[str, Any]:
    """What the figures depend on: printed above the table and stored in the JSON."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in info["load_average"])
    return (f"{info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
            f"Python {info['python']}, load average {load} at start, {info['date']}")


def text_table(figures: list[Figure]) -> str:
    rows = [list(HEADER)] + [f.cells() for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines)


def markdown_table(figures: list[Figure]) -> str:
    return markdown_rows([f.cells() for f in figures])


def markdown_rows(rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def notes(figures: list[Figure]) -> str:
    """The notes of figures that have one beyond the verdict (what was measured how)."""
    out = [f"- {f.name}: {f.note}" for f in figures if f.note and f.met is not False]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench-results.json",
                        help="where to write the results (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown (the README's Benchmarks section)")
    parser.add_argument("--only", default=",".join(TOPICS),
                        help=f"comma-separated topics (default: all: {','.join(TOPICS)})")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="measure nothing: print the Markdown table of a results file")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        print(f"`make bench` on {machine_line(result['machine'])}:\n")
        print(markdown_rows([f["cells"] for f in result["figures"]]))
        return 0
    topics = [t for t in args.only.split(",") if t]
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        parser.error(f"unknown topic(s) {', '.join(unknown)}; topics: {', '.join(TOPICS)}")

    info = machine()
    print(f"rprocd benchmarks on {machine_line(info)}", flush=True)
    began = time.monotonic()
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    durations: dict[str, float] = {}
    for topic in topics:
        t0 = time.monotonic()
        print(f"  {topic} ...", end="", flush=True)
        try:
            module = importlib.import_module(f"tests.bench.{topic}")
            figures += module.run()
        except Exception as exc:  # one broken topic must not hide the others
            failed[topic] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        durations[topic] = round(time.monotonic() - t0, 1)
        print(f" {durations[topic]:.0f} s" + (" FAILED" if topic in failed else ""), flush=True)
    total = time.monotonic() - began

    print()
    print(text_table(figures))
    extra = notes(figures)
    if extra:
        print("\nNotes:\n" + extra)
    missed = [f for f in figures if f.met is False]
    print(f"\n{len(figures)} figures, {sum(f.met is True for f in figures)} targets met, "
          f"{len(missed)} missed; {total:.0f} s")
    for topic, why in failed.items():
        print(f"topic {topic} FAILED: {why}")
    if args.markdown:
        print(f"\n`make bench` on {machine_line(info)}:\n")
        print(markdown_table(figures))
        if extra:
            print("\n" + extra)

    result = {"machine": info, "seconds": round(total, 1), "durations": durations,
              "failed": failed, "figures": [f.to_json() for f in figures]}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
