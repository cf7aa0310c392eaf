"""Issue 6: a board image without polkitd. The daemon cannot ask polkit, so
only root and members of `AllowGroup=` may mutate; everyone still reads.

The bus of `rprocd-sim --no-polkit` has no org.freedesktop.PolicyKit1 at all.
Callers are real processes: root, uid 65534 (nobody, primary group nogroup
on Debian) and uid 1 (daemon), through setpriv. rprocctl shows the reason
(busctl prints every AccessDenied as "Access denied").
"""

from __future__ import annotations

import subprocess
import sys

try:
    from test_api_board import BUS_NAME, PROCESSOR, board, needs_sim
    from test_sim_tools import M4, MP1, sys_state
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import BUS_NAME, PROCESSOR, board, needs_sim
    from tests.integration.test_sim_tools import M4, MP1, sys_state

pytestmark = needs_sim

DAEMON_USER = ["setpriv", "--reuid=1", "--regid=1", "--init-groups"]


def rprocctl_as_daemon_user(sim, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DAEMON_USER, sys.executable, "-m", "rprocd.ctl", *args],
                          env=sim.client_env, capture_output=True, text=True, timeout=60)


def test_without_polkit_only_root_may_mutate():
    with board(MP1, polkit=False, firmware=("m4-good.elf",)) as sim:
        out = sim.busctl("get-property", BUS_NAME, M4, PROCESSOR, "State", user="nobody")
        assert out.returncode == 0 and "offline" in out.stdout, out.stderr
        out = sim.rprocctl("start", "m4", "m4-good.elf", user="nobody")
        assert out.returncode == 4, out.stderr
        assert "polkit is not running" in out.stderr and "limited to root" in out.stderr
        assert sys_state(sim, "remoteproc0") == "offline"
        out = sim.rprocctl("start", "m4", "m4-good.elf")
        assert out.returncode == 0, out.stderr
        assert sys_state(sim, "remoteproc0") == "running"
        out = sim.rprocctl("stop", "m4", user="nobody")
        assert out.returncode == 4, out.stderr
        assert sys_state(sim, "remoteproc0") == "running"


def test_without_polkit_allow_group_members_may_mutate():
    config = "[Manager]\nAllowGroup=nogroup\n"
    with board(MP1, polkit=False, config=config, firmware=("m4-good.elf",)) as sim:
        out = sim.rprocctl("start", "m4", "m4-good.elf", user="nobody")
        assert out.returncode == 0, out.stderr
        assert sys_state(sim, "remoteproc0") == "running"
        out = rprocctl_as_daemon_user(sim, "stop", "m4")  # uid 1 is not in nogroup
        assert out.returncode == 4, out.stderr
        assert "root or members of AllowGroup=nogroup" in out.stderr
        assert sys_state(sim, "remoteproc0") == "running"
        out = sim.rprocctl("stop", "m4", user="nobody")
        assert out.returncode == 0, out.stderr
        assert sys_state(sim, "remoteproc0") == "offline"
