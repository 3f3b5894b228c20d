"""A real single-host Grid Engine (Son of Grid Engine 8.1, Debian's ``gridengine-*``) for the
SGE adapter's tests: ``sge_qmaster`` and ``sge_execd`` on loopback ports of their own, in a cell
of their own under Debian's ``SGE_ROOT`` with every spool directory in ``root``, so an existing
Grid Engine installation (the package's ``default`` cell) is neither used nor changed.

Three things the stock installation does not allow are set in this cell only: jobs as root
(``min_uid``/``min_gid`` 0: the loopback sshd logs in as root), a one-second scheduling
interval (instead of 15 s), and a ``host_aliases`` entry for the host's name, because Grid
Engine refuses a client whose address resolves back to another name (here ``localhost``).
Clients reach this cell through :attr:`GridEngine.env`, which a ``[host.NAME]``'s ``env`` passes
to every remote command.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from tests.services import slurm as loopback
from tests.services.loopback import free_port, free_ports, wait_for
from tests.services.slurm import kill_pidfile

SGE_ROOT = Path("/var/lib/gridengine")
PACKAGES = {"sge_qmaster": "gridengine-master", "sge_execd": "gridengine-exec", "qsub": "gridengine-client"}

_GLOBAL_CONFIGURATION = Path("/usr/share/gridengine/default-configuration")


def missing_programs() -> list[str]:
    return loopback.missing_programs(PACKAGES)


class GridEngine:
    """One host's Grid Engine: qmaster, execd and an ``all.q`` of ``slots`` slots."""

    def __init__(self, root: Path, slots: int = 8) -> None:
        self.root = root
        self.slots = slots
        self.host = socket.gethostname().split(".")[0]
        self.cell = f"statevisor{free_port()}"  # unique: several test sessions may coexist
        self.common = SGE_ROOT / self.cell / "common"
        self.qmaster_port, self.execd_port = free_ports(2)
        self.env = {
            "SGE_ROOT": str(SGE_ROOT),
            "SGE_CELL": self.cell,
            "SGE_QMASTER_PORT": str(self.qmaster_port),
            "SGE_EXECD_PORT": str(self.execd_port),
        }

    def run(
        self, *argv: str, check: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in this cell (``env`` adds to its variables); ``check``: raise with its stderr."""
        done = subprocess.run(
            list(argv), env={**os.environ, **self.env, **(env or {})}, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
        return done

    def start(self) -> None:
        self._make_cell()
        self.run("/usr/sbin/sge_qmaster", check=True)  # daemonizes once it listens
        wait_for("sge_qmaster to answer", lambda: self.run("qconf", "-sh").returncode == 0, 30)
        self._add_host_and_queue()
        self.run("/usr/sbin/sge_execd", check=True)
        wait_for("the Grid Engine queue to be usable", self._queue_up, 60)

    def _make_cell(self) -> None:
        for sub in ("qmaster", "execd", "spooldb", "conf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.common.mkdir(parents=True)
        (self.common / "bootstrap").write_text(
            f"""Version: 6.2
admin_user              none
default_domain          none
ignore_fqdn             false
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         {self.root}/spooldb
binary_path             /usr/sbin
qmaster_spool_dir       {self.root}/qmaster
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""
        )
        (self.common / "act_qmaster").write_text(f"{self.host}\n")
        (self.common / "host_aliases").write_text(f"{self.host} localhost\n")
        configuration = self.root / "conf" / "global"
        lines = []
        for line in _GLOBAL_CONFIGURATION.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in ("min_uid", "min_gid"):
                line = f"{key} 0"
            elif key == "execd_spool_dir":
                line = f"execd_spool_dir {self.root}/execd"
            lines.append(line)
        configuration.write_text("\n".join(lines) + "\n")
        tools = Path("/usr/lib/gridengine")
        self.run(str(tools / "spoolinit"), "berkeleydb", "libspoolb", f"{self.root}/spooldb", "init", check=True)
        self.run(str(tools / "spooldefaults"), "configuration", str(configuration), check=True)
        self.run(str(tools / "spooldefaults"), "complexes", "/usr/share/gridengine/util/resources/centry", check=True)
        self.run(str(tools / "spooldefaults"), "usersets", "/usr/share/gridengine/util/resources/usersets", check=True)
        self.run(str(tools / "spooldefaults"), "managers", "root", check=True)

    def _add_host_and_queue(self) -> None:
        conf = self.root / "conf"
        (conf / "exechost").write_text(
            f"hostname {self.host}\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\n"
            "projects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n"
        )
        # qconf -aq edits the stock queue template in $EDITOR: this "editor" sets our values.
        editor = conf / "queue-editor"
        changes = {
            "hostlist": self.host, "slots": str(self.slots), "shell": "/bin/sh",
            "shell_start_mode": "unix_behavior", "pe_list": "NONE", "load_thresholds": "NONE",
        }  # fmt: skip
        script = " ".join(f"-e 's|^{key} .*|{key} {value}|'" for key, value in changes.items())
        editor.write_text(f'#!/bin/sh\nexec sed -i {script} "$1"\n')
        editor.chmod(0o755)
        self.run("qconf", "-as", self.host, check=True)
        self.run("qconf", "-Ae", str(conf / "exechost"), check=True)
        self.run("qconf", "-aq", "all.q", check=True, env={"EDITOR": str(editor)})
        scheduler = self.run("qconf", "-ssconf", check=True).stdout
        faster = "\n".join(
            "schedule_interval 0:0:1" if line.startswith("schedule_interval") else line
            for line in scheduler.splitlines()
        )
        (conf / "scheduler").write_text(faster + "\n")
        self.run("qconf", "-Msconf", str(conf / "scheduler"), check=True)

    def _queue_up(self) -> bool:
        # A queue instance whose execd has not reported yet is in state "u" (unknown).
        out = self.run("qstat", "-f", "-q", "all.q")
        rows = [line.split() for line in out.stdout.splitlines() if line.startswith("all.q@")]
        return out.returncode == 0 and bool(rows) and all(len(row) == 5 for row in rows)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(number, state, name) of every job qstat lists (pending and running ones)."""
        out = self.run("qstat", "-xml", "-u", "*", check=True).stdout
        return [
            (job.findtext("JB_job_number", ""), job.findtext("state", ""), job.findtext("JB_name", ""))
            for job in ElementTree.fromstring(out).iter("job_list")
        ]

    def stop(self) -> None:
        # execd names its spool directory by the name its address resolves to (often localhost)
        for pidfile in [*(self.root / "execd").glob("*/execd.pid"), self.root / "qmaster" / "qmaster.pid"]:
            kill_pidfile(pidfile)
        shutil.rmtree(SGE_ROOT / self.cell, ignore_errors=True)
