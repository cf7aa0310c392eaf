"""A Report as text, like readelf for remoteproc (`rprocctl inspect`)."""

from __future__ import annotations

from rprocd.firmware.findings import Report


def _hex(value: int) -> str:
    return f"0x{value:08x}"


def _flags(flags: int) -> str:
    return ("R" if flags & 4 else "-") + ("W" if flags & 2 else "-") + ("X" if flags & 1 else "-")


def format_report(report: Report) -> str:
    lines = [f"File:         {report.path or '(bytes)'} ({report.size} bytes)",
             f"Format:       {report.format}"]
    if report.elf_class:
        lines.append(f"ELF:          ELF{report.elf_class}, {report.endianness}-endian, "
                     f"{report.machine_name}")
    if report.entry is not None:
        lines.append(f"Entry:        {_hex(report.entry)}")
    if report.boot_vector:
        bv = report.boot_vector
        lines.append(f"Boot vector:  {_hex(bv['address'])} (section {bv['section']})")
    if report.signed:
        lines.append("Signed:       " + ", ".join(
            f"{k}={_value(v)}" for k, v in report.signed.items()))
    if report.segments:
        lines += ["", "Program headers:",
                  "  #  type       offset     paddr      vaddr      filesz     memsz      "
                  "flg  region"]
        for s in report.segments:
            image = f"{s['image']}:" if "image" in s else ""
            lines.append(
                f"  {image}{s['index']:<2} {s['type']:<10} {_hex(s['offset'])} "
                f"{_hex(s['paddr'])} {_hex(s['vaddr'])} {_hex(s['filesz'])} "
                f"{_hex(s['memsz'])} {_flags(s['flags'])}  {s['region'] or '-'}")
    lines += _table(report.resource_table)
    lines += ["", "Findings:"]
    if not report.findings:
        lines.append("  none: the image looks good")
    for f in report.findings:
        lines.append(f"  {f.severity:<8}{f.code}: {f.message}")
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _table(table: dict) -> list[str]:
    if not table:
        return ["", "Resource table: none"]
    head = f"Resource table at {_hex(table['address'])}, {table['size']} bytes"
    if not table["valid"]:
        return ["", head + ": not usable (see findings)"]
    lines = ["", f"{head}, version {table['version']}, {table['num']} entries:"]
    for e in table["entries"]:
        lines.append(f"  {e['index']:<2} {e['type']:<9} {_entry(e)}")
        for j, v in enumerate(e.get("vrings", [])):
            lines.append(f"       vring{j}  da {_hex(v['da'])}  align {v['align']}  "
                         f"num {v['num']}  notifyid {v['notifyid']}")
    return lines


def _entry(e: dict) -> str:
    kind = e["type"]
    if kind in ("carveout", "devmem") and "da" in e:
        return (f"'{e['name']}' da {_hex(e['da'])} pa {_hex(e['pa'])} len {e['len']} "
                f"flags 0x{e['flags']:x}")
    if kind == "trace" and "da" in e:
        return f"'{e['name']}' da {_hex(e['da'])} len {e['len']}"
    if kind == "vdev" and "id" in e:
        name = e["id_name"] or "virtio"
        return (f"{name} (id {e['id']}), {e['num_of_vrings']} vrings, config {e['config_len']} "
                f"bytes, features 0x{e['dfeatures']:x}")
    if kind == "invalid":
        return f"offset {e['offset']} outside the table"
    return f"type {e['type_id']} at offset {e['offset']}"
