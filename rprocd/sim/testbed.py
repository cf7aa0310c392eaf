"""The emulated `/sys`: a umockdev testbed directory whose `sys` is our FUSE mount.

Implements the kernel's two seams (`DeviceSink`, `DebugfsSink`). The device
directories (attributes, `uevent`, `subsystem`, class and bus links, `driver`)
are built directly in the in-memory tree, like the driver core builds them.
Processes see it through umockdev's preload (`UMOCKDEV_DIR` = `root`), which
also turns their netlink uevent monitors into sockets in that directory.

Placement follows the driver core: platform devices without a parent under
`/sys/devices/platform/<soc>`, other parentless devices under
`/sys/devices/virtual/<subsystem>`, class devices under a `<class>` glue
directory of their parent (`.../10000000.m4/remoteproc/remoteproc0`), bus
devices directly under their parent.

Driver binding follows it too: a `DRIVER` property given to `add` names the
driver that will bind; it appears in `uevent`, with the `driver` link, at the
`bind` uevent and is gone before `unbind` is sent. Writing an action to a
`uevent` file sends a synthetic uevent, as `udevadm trigger` does.

The uevents are libudev monitor messages written straight to the sockets
umockdev's preload binds in the testbed directory (`uevent.py`): umockdev's
own sender would read each device back through /sys, i.e. through our own
mount (a deadlock if the caller holds the GIL), and exits on a full socket.
So this process never sets UMOCKDEV_DIR and sees the real /sys.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable

from rprocd.sim.interfaces import SimFile
from rprocd.sim.uevent import UeventSender
from rprocd.sim.vfs import Mount, SimFS, SimTree

#: subsystems that are buses (`/sys/bus/<bus>/devices`, no glue directory)
BUSES = frozenset({"platform", "virtio", "rpmsg", "amba", "usb", "pci"})
#: what a write to `uevent` may ask for (lib/kobject_uevent.c)
UEVENT_ACTIONS = ("add", "remove", "change", "move", "online", "offline", "bind", "unbind")
DEBUGFS = "/kernel/debug"


def _rel(syspath: str) -> str:
    """`/sys/devices/x` -> `/devices/x` (a path in the tree, whose root is /sys)."""
    if syspath != "/sys" and not syspath.startswith("/sys/"):
        raise ValueError(f"not a /sys path: {syspath!r}")
    return syspath[len("/sys") :] or "/"


def _relative(target: str, link: str) -> str:
    """The text of a relative symlink at `link` pointing to `target`."""
    return posixpath.relpath(target, posixpath.dirname(link))


class _Device:
    """What the testbed remembers of a device: its uevent properties."""

    def __init__(self, subsystem: str, properties: dict[str, str], driver: str | None) -> None:
        self.subsystem = subsystem
        self.properties = properties
        self.driver = driver  # named by DRIVER at add, bound at `bind`


class Testbed:
    """The `DeviceSink` and `DebugfsSink` of the emulated kernel: a testbed
    directory for umockdev's preload, its `sys` our FUSE mount."""

    def __init__(self, soc: str = "soc") -> None:
        self.soc = soc
        #: UMOCKDEV_DIR for the processes that should see this /sys
        self.root: str = tempfile.mkdtemp(prefix="rprocd-sim-root-")
        os.chmod(self.root, 0o755)  # unprivileged clients under the preload
        os.mkdir(posixpath.join(self.root, "sys"))
        self._sender: UeventSender | None = UeventSender(self.root)
        self.tree = SimTree()
        self.fs = SimFS(self.tree)
        self._mount = Mount(self.fs, posixpath.join(self.root, "sys"))
        self._mutex = threading.RLock()
        self._devices: dict[str, _Device] = {}

    @property
    def mountpoint(self) -> str:
        return self._mount.mountpoint

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Create the skeleton of /sys and mount it."""
        for path in ("/devices/platform", "/devices/virtual", "/bus", "/class",
                     "/module", "/firmware", DEBUGFS):
            self.tree.add_dir(path)
        self._mount.start()

    def stop(self) -> None:
        """Unmount, then let umockdev delete its directory. Idempotent."""
        with self._mutex:
            self._mount.stop()
            self._sender = None
            shutil.rmtree(self.root, ignore_errors=True)

    # -- DeviceSink -------------------------------------------------------

    def add(
        self,
        subsystem: str,
        name: str,
        parent: str | None,
        properties: dict[str, str],
        files: dict[str, SimFile],
        links: dict[str, str],
    ) -> str:
        with self._mutex:
            syspath = f"{self._parent_path(subsystem, parent)}/{name}"
            if syspath in self._devices:
                raise ValueError(f"device {syspath} exists already")
            rel = _rel(syspath)
            props = dict(properties)
            device = _Device(subsystem, props, props.pop("DRIVER", None))
            self._devices[syspath] = device
            # Everything is in place before `add` is announced.
            for fname, simfile in files.items():
                self.tree.add_file(f"{rel}/{fname}", simfile)
            for lname, target in links.items():
                self.tree.add_symlink(f"{rel}/{lname}", _relative(target, f"{syspath}/{lname}"))
            self.tree.add_file(f"{rel}/uevent", self._uevent_file(syspath, device))
            kind = "bus" if subsystem in BUSES else "class"
            self.tree.add_symlink(f"{rel}/subsystem",
                                  _relative(f"/sys/{kind}/{subsystem}", f"{syspath}/subsystem"))
            if kind == "class" and parent is not None:
                # device_add_class_symlinks: a class device links to its parent.
                self.tree.add_symlink(f"{rel}/device", _relative(parent, f"{syspath}/device"))
            entry = (f"/sys/bus/{subsystem}/devices/{name}" if kind == "bus"
                     else f"/sys/class/{subsystem}/{name}")
            self.tree.add_symlink(_rel(entry), _relative(syspath, entry))
            self._send(syspath, "add")
            return syspath

    def remove(self, syspath: str) -> None:
        with self._mutex:
            if syspath not in self._devices:
                raise ValueError(f"no device {syspath}")
            # Children the caller left behind go first, deepest first, as in
            # device_del; each announces its own removal.
            below = [p for p in self._devices if p.startswith(syspath + "/")]
            for path in sorted(below, key=len, reverse=True) + [syspath]:
                if self.tree.link_target(f"{_rel(path)}/driver") is not None:
                    self._unlink_driver(path)  # device_del releases the driver first
                    self._send(path, "unbind")
                self._send(path, "remove")
                self.tree.remove(_rel(path))
                del self._devices[path]
            for top in ("/bus", "/class"):
                for sub in self.tree.listdir(top):
                    where = f"{top}/{sub}/devices" if top == "/bus" else f"{top}/{sub}"
                    for link in self.tree.dangling_links(where):
                        self.tree.remove(link)

    def uevent(self, syspath: str, action: str) -> None:
        with self._mutex:
            if syspath not in self._devices:
                raise ValueError(f"no device {syspath}")
            if action == "bind":
                self._bind_driver(syspath)
            elif action == "unbind":
                self._unlink_driver(syspath)
            self._send(syspath, action)

    def link(self, syspath: str, name: str, target: str | None) -> None:
        with self._mutex:
            path = f"{_rel(syspath)}/{name}"
            if target is None:
                self.tree.remove(path)
            else:
                self.tree.add_symlink(path, _relative(target, f"{syspath}/{name}"))

    # -- DebugfsSink ------------------------------------------------------

    def add_dir(self, relpath: str, files: dict[str, SimFile]) -> None:
        """Create (or add files to) `/sys/kernel/debug/<relpath>`."""
        base = f"{DEBUGFS}/{relpath.strip('/')}"
        with self._mutex:
            self.tree.add_dir(base)
            for name, simfile in files.items():
                self.tree.add_file(f"{base}/{name}", simfile)

    def remove_dir(self, relpath: str) -> None:
        with self._mutex:
            self.tree.remove(f"{DEBUGFS}/{relpath.strip('/')}")

    # -- other files ------------------------------------------------------

    def add_files(self, files: dict[str, SimFile]) -> None:
        """Files at fixed /sys paths (relative to /sys): driver bind/unbind,
        devcoredump `disabled`, module parameters, the device tree."""
        with self._mutex:
            for relpath, simfile in files.items():
                self.tree.add_file("/" + relpath.strip("/"), simfile)

    def add_control_dir(self, name: str, files: Callable[[], dict[str, SimFile]]) -> str:
        """A directory for the emulator's own knobs: hidden at the top of the
        mount (not listed in /sys), re-read from `files()` at every lookup.
        Returns its real path, usable with or without the preload."""
        path = "/" + name.strip("/")
        self.tree.hidden.add(path[1:])
        self.fs.refreshers[path] = lambda: self.tree.replace(path, files())
        self.tree.replace(path, files())
        return self.mountpoint + path

    # -- internals --------------------------------------------------------

    def _send(self, syspath: str, action: str) -> None:
        if self._sender is None:
            raise RuntimeError("the testbed is stopped")
        device = self._devices[syspath]
        self._sender.send(syspath, action, device.subsystem, dict(device.properties))

    def _parent_path(self, subsystem: str, parent: str | None) -> str:
        """Where the device directory goes (made if missing)."""
        if parent is None:
            if subsystem == "platform":
                self._ensure_soc()
                return f"/sys/devices/platform/{self.soc}"
            path = f"/sys/devices/virtual/{subsystem}"
        elif subsystem in BUSES:
            path = parent
        else:
            path = f"{parent}/{subsystem}"  # class glue directory
        self.tree.add_dir(_rel(path))
        return path

    def _ensure_soc(self) -> None:
        soc = f"/sys/devices/platform/{self.soc}"
        if soc not in self._devices:
            self.add("platform", self.soc, "/sys/devices/platform", {"OF_NAME": self.soc}, {}, {})

    def _uevent_file(self, syspath: str, device: _Device) -> SimFile:
        def read() -> bytes:
            # No lock: umockdev's sender reads this while we hold ours.
            return "".join(f"{k}={v}\n" for k, v in list(device.properties.items())).encode()

        def write(data: bytes) -> int:
            action = data.split(b"\0", 1)[0].decode(errors="replace").split()
            if not action or action[0] not in UEVENT_ACTIONS:
                raise OSError(errno.EINVAL, "unknown uevent action")
            with self._mutex:
                if syspath in self._devices:
                    self._send(syspath, action[0])
            return len(data)

        return SimFile(0o644, read, write)

    def _bind_driver(self, syspath: str) -> None:
        device = self._devices[syspath]
        if device.driver is None:
            return
        device.properties["DRIVER"] = device.driver
        drv_dir = f"/sys/bus/{device.subsystem}/drivers/{device.driver}"
        self.tree.add_dir(_rel(drv_dir))
        self.tree.add_symlink(f"{_rel(syspath)}/driver", _relative(drv_dir, f"{syspath}/driver"))
        name = posixpath.basename(syspath)
        self.tree.add_symlink(f"{_rel(drv_dir)}/{name}", _relative(syspath, f"{drv_dir}/{name}"))

    def _unlink_driver(self, syspath: str) -> None:
        rel = _rel(syspath)
        target = self.tree.link_target(f"{rel}/driver")
        if target is not None:
            drv_dir = posixpath.normpath(posixpath.join(rel, target))
            self.tree.remove(f"{drv_dir}/{posixpath.basename(syspath)}")
            self.tree.remove(f"{rel}/driver")
        self._devices[syspath].properties.pop("DRIVER", None)
