"""Firmware images: where the kernel finds them, and whether it will load them.

The public API (HACKING.md): `search_dirs`, `check_name`, `resolve`,
`read_target`, `validate_file` and the `Report` / `Finding` / `Target` data;
`format_report` renders a Report as text; `imports.ImportStore` takes images
handed over as file descriptors.
"""

from rprocd.firmware.findings import Finding, Report
from rprocd.firmware.report_text import format_report
from rprocd.firmware.search import check_name, resolve, search_dirs
from rprocd.firmware.target import Region, Target, read_target
from rprocd.firmware.validate import validate_bytes, validate_file

__all__ = [
    "Finding",
    "Region",
    "Report",
    "Target",
    "check_name",
    "format_report",
    "read_target",
    "resolve",
    "search_dirs",
    "validate_bytes",
    "validate_file",
]
