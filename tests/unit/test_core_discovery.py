"""Discovery: uevents sorted into add / remove / hint, udev paths under our sysfs root."""

from __future__ import annotations

from pathlib import Path

from rprocd.discovery import Discovery
from rprocd.paths import Paths


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def device_added(self, syspath: str) -> None:
        self.events.append(("added", syspath))

    def device_removed(self, syspath: str) -> None:
        self.events.append(("removed", syspath))

    def device_hint(self, subsystem: str, action: str, syspath: str) -> None:
        self.events.append(("hint", subsystem, action, syspath))


def test_dispatch_and_rebase(tmp_path: Path) -> None:
    paths = Paths.from_environ({"RPROCD_SYSFS": str(tmp_path)})
    sink = Sink()
    discovery = Discovery(paths, sink)
    core = "/sys/devices/platform/10000000.m4/remoteproc/remoteproc0"
    here = str(tmp_path / "devices/platform/10000000.m4/remoteproc/remoteproc0")
    discovery._dispatch("add", "remoteproc", core)
    discovery._dispatch("change", "remoteproc", core)
    discovery._dispatch("add", "platform", core + "/rproc-virtio.0.auto")
    discovery._dispatch("add", "platform", "/sys/devices/platform/serial0")  # not ours
    discovery._dispatch("remove", "rpmsg", core + "/v/virtio0/virtio0.rpmsg-tty.-1.1024")
    discovery._dispatch("remove", "remoteproc", core)
    assert sink.events == [
        ("added", here),
        ("hint", "remoteproc", "change", here),
        ("hint", "platform", "add", here + "/rproc-virtio.0.auto"),
        ("hint", "rpmsg", "remove", here + "/v/virtio0/virtio0.rpmsg-tty.-1.1024"),
        ("removed", here),
    ]
    discovery.close()


def test_start_monitor_and_coldplug_without_any_core() -> None:
    discovery = Discovery(Paths.from_environ({}), Sink())
    discovery.start_monitor()
    assert all(Path(p).name.startswith("remoteproc") for p in discovery.coldplug())
    discovery.close()
