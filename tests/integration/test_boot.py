"""Boot policy (issue 3): cores the boot loader started are adopted as they
are (EarlyBoot=adopt, nothing written), a detached one is attached by
Start(""), EarlyBoot=restart restarts them on the daemon's first run in a
boot, and a daemon restart in the same boot leaves running cores alone.

"Nothing written" is checked on the kernel's side: each boot of a core makes
a new virtio device (`virtioN`, N only grows), and one `stop` written to
/sys by hand turns a core offline only if its kernel power count is 1, i.e.
nobody wrote an extra `start` (ABI §2.1: a `start` on a running or attached
core succeeds silently and takes another reference).
"""

from __future__ import annotations

import signal

try:
    from test_api_board import BUS_NAME, MANAGER_PATH, needs_sim, wait_until
    from test_sim_tools import (
        ERROR,
        M4,
        MP1,
        T,
        error_of,
        name_owner,
        own_daemons,
        sim_board,
        sys_state,
        sys_write,
        virtio_devices,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import BUS_NAME, MANAGER_PATH, needs_sim, wait_until
    from tests.integration.test_sim_tools import (
        ERROR,
        M4,
        MP1,
        T,
        error_of,
        name_owner,
        own_daemons,
        sim_board,
        sys_state,
        sys_write,
        virtio_devices,
    )

pytestmark = needs_sim

EARLY_M4 = ("firmware=m4-good.elf",)  # what the boot loader started on the m4


def one_stop_turns_it_offline(sim, device: str) -> None:
    """Power count 1: a single `stop` written to /sys ends the core."""
    assert sys_write(sim, f"/sys/class/remoteproc/{device}/state", "stop") == (0, "")
    assert sys_state(sim, device) == "offline"


def test_an_attached_core_is_adopted_untouched():
    """EarlyBoot=adopt (the default, spelled out), even with AutoStart=yes and
    another configured firmware: the core runs on as the boot loader left it."""
    config = "[Processor m4]\nEarlyBoot=adopt\nAutoStart=yes\nFirmware=m4-quiet.elf\n"
    with sim_board(MP1, config=config, options=("early=attached", *EARLY_M4),
                   sim_firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.State, m4.Operation, m4.Failed, m4.LastError) == ("attached", "", False, "")
        assert m4.Firmware == "unknown"  # what the kernel says of an attached core's image
        assert m4.RunningSince > 0
        assert m4.RpmsgChannels == ["rpmsg-tty"]
        wait_until(lambda: "booted" in m4.ReadTrace("", timeout=T), what="its trace")
        out = sim.rprocctl("status", "m4")
        assert out.returncode == 0 and "attached" in out.stdout, out.stderr
        assert virtio_devices(sim) == ["virtio0"]  # the kernel's attach at probe, no other
        assert "m4: adopted as attached, untouched" in sim.daemon_log()
        one_stop_turns_it_offline(sim, m4.Device)
        wait_until(lambda: m4.State == "offline", what="the daemon to see it offline")
        assert m4.Failed is False


def test_a_detached_core_is_left_detached_then_attached_by_start():
    with sim_board(MP1, options=("early=detached", *EARLY_M4),
                   sim_firmware=("m4-good.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.State, m4.Operation, m4.RunningSince) == ("detached", "", 0)
        assert sys_state(sim, m4.Device) == "detached"
        assert virtio_devices(sim) == []
        name, message = error_of(m4.Stop, timeout=T)
        assert name == ERROR + "BadState" and "Start() attaches" in message, message

        m4.Start("", timeout=T)
        assert (m4.State, m4.Operation, m4.Failed) == ("attached", "", False)
        assert m4.RunningSince > 0
        assert sys_state(sim, m4.Device) == "attached"
        assert virtio_devices(sim) == ["virtio0"]
        wait_until(lambda: m4.RpmsgChannels == ["rpmsg-tty"], what="rpmsg channels")

        m4.Detach(timeout=T)  # and back: the firmware keeps running without Linux
        assert (m4.State, m4.RunningSince) == ("detached", 0)
        out = sim.rprocctl("start", "m4")  # rprocctl with no firmware: attach again
        assert (out.returncode, out.stdout.split(":")[1].split()[0]) == (0, "attached"), \
            (out.stdout, out.stderr)
        one_stop_turns_it_offline(sim, m4.Device)


def test_early_boot_restart_restarts_an_attached_core_with_the_configured_firmware():
    config = "[Processor m4]\nEarlyBoot=restart\nFirmware=m4-quiet.elf\n"
    with sim_board(MP1, config=config, options=("early=attached", *EARLY_M4),
                   sim_firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        # READY=1 comes after the boot actions: by now it runs what we configured.
        assert (m4.State, m4.Firmware, m4.Operation, m4.Failed) == \
            ("running", "m4-quiet.elf", "", False)
        assert sys_state(sim, m4.Device) == "running"
        assert virtio_devices(sim) == ["virtio1"]  # attached at probe, then booted again
        one_stop_turns_it_offline(sim, m4.Device)


def test_early_boot_restart_attaches_then_restarts_a_detached_core():
    config = "[Processor m4]\nEarlyBoot=restart\nAutoStart=yes\nFirmware=m4-quiet.elf\n"
    with sim_board(MP1, config=config, options=("early=detached", *EARLY_M4),
                   sim_firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.State, m4.Firmware, m4.Operation) == ("running", "m4-quiet.elf", "")
        one_stop_turns_it_offline(sim, m4.Device)


def test_a_daemon_restart_in_the_same_boot_leaves_running_cores_alone():
    """SIGKILL the daemon while m4 runs, start it again (as systemd's
    Restart= would): EarlyBoot=restart and AutoStart=yes do not apply to a
    core the previous daemon already handled in this boot; the core keeps
    its boot, its power count and its firmware, and the new daemon serves it."""
    config = "[Processor m4]\nAutoStart=yes\nEarlyBoot=restart\nFirmware=m4-good.elf\n"
    with sim_board(MP1, daemon=False, config=config, sim_firmware=("m4-good.elf",)) as sim, \
            own_daemons(sim) as daemon:
        first = daemon("rprocd-1").start()
        owner = name_owner(sim)
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.State, m4.Firmware) == ("running", "m4-good.elf")  # AutoStart=yes
        device, boot = m4.Device, virtio_devices(sim)
        wait_until(lambda: "heartbeat" in m4.ReadTrace("", timeout=T), what="a trace line")
        trace = m4.ReadTrace("", timeout=T)

        first.kill(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        wait_until(lambda: name_owner(sim) == "", what="the bus to drop the dead daemon")
        assert sys_state(sim, device) == "running"

        second = daemon("rprocd-2").start()
        assert name_owner(sim) not in ("", owner)
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.State, m4.Firmware, m4.Operation, m4.Failed) == \
            ("running", "m4-good.elf", "", False)
        assert m4.RpmsgChannels == ["rpmsg-tty"]
        assert sim.pydbus().get(BUS_NAME, MANAGER_PATH).Processors == [M4]
        assert virtio_devices(sim) == boot  # not booted again
        assert m4.ReadTrace("", timeout=T).startswith(trace[:40])  # the same run's log
        one_stop_turns_it_offline(sim, device)
        wait_until(lambda: m4.State == "offline", what="the new daemon to see it offline")
        assert "m4: adopted as running, untouched" in second.log()
        assert second.terminate() == 0
