"""A real single-node Slurm cluster and a real sshd on loopback, for the batch kind's tests and
for ``statevisor bench slurm``.

Needs Debian's ``slurm-wlm``, ``munge`` and ``openssh-server`` and root (slurmd runs jobs as the
submitting user); the test command installs the packages. Every daemon gets ports and
directories of its own, so a developer's own Slurm or sshd is left alone, and everything is
stopped at the end of the session. Waiting is on conditions (``sinfo`` says idle, the port
answers), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.services.loopback import free_port, free_ports, port_open, wait_for

PACKAGES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge", "sshd": "openssh-server"}


def missing_programs(packages: Mapping[str, str] = PACKAGES) -> list[str]:
    """``packages`` is {program: the Debian package that has it}."""
    return [
        f"{program} (Debian package {package})"
        for program, package in packages.items()
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists()
    ]


def kill_pidfile(path: Path, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of ours counts as gone once reaped
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z" if Path(f"/proc/{pid}").exists() else True

    wait_for(f"pid {pid} ({path.name}) to exit", gone, timeout)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


class Munge:
    """A munged of its own: its own key and socket, so that test sessions (and a developer's
    own Slurm) never share one, and stopping ours cannot take anyone else's away.

    munged insists that every directory above its socket is searchable by all, which pytest's
    private temporary directories are not: its files live in ``/run/statevisor-munge-<port>``.
    """

    def __init__(self) -> None:
        self.root = Path(f"/run/statevisor-munge-{free_port()}")
        self.socket = self.root / "munge.socket"

    def running(self) -> bool:
        socket = str(self.socket)
        credential = subprocess.run(["munge", "-n", "-S", socket], capture_output=True, check=False)
        if credential.returncode != 0:
            return False
        decoded = subprocess.run(["unmunge", "-S", socket], input=credential.stdout, capture_output=True, check=False)
        return decoded.returncode == 0

    def start(self) -> None:
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)  # not mkdir's mode, which the umask would narrow
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        subprocess.run(
            ["/usr/sbin/munged", f"--socket={self.socket}", f"--key-file={key}",
             f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/munged.log",
             f"--seed-file={self.root}/munged.seed"],
            check=True,
        )  # fmt: skip
        wait_for("munged to answer", self.running, 10)

    def stop(self) -> None:
        kill_pidfile(self.root / "munged.pid")
        shutil.rmtree(self.root, ignore_errors=True)


class Slurm:
    """slurmctld + slurmd for one node, 127.0.0.1, ports and state of its own."""

    def __init__(self, root: Path, munge_socket: Path) -> None:
        self.root = root
        self.munge_socket = munge_socket
        self.conf = root / "slurm.conf"
        self.ctld_port, self.d_port = free_ports(2)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        memory = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024)
        root = self.root
        self.conf.write_text(
            f"""ClusterName=statevisortest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ctld_port}
SlurmdPort={self.d_port}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MinJobAge=600
MaxJobCount=20000
NodeName={host} NodeAddr=127.0.0.1 CPUs=32 RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
        )

    def start(self) -> None:
        self.write_config()
        self.start_controller()
        subprocess.run(["slurmd", "-f", str(self.conf)], env=self.env, check=True)
        wait_for("the Slurm node to be idle", self._idle, 60)

    def start_controller(self) -> None:
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True)
        wait_for("slurmctld to answer", lambda: self.run("squeue", "-h").returncode == 0, 30)

    def stop_controller(self) -> None:
        kill_pidfile(self.root / "slurmctld.pid")

    def _idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%T")
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=False)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(id, state, name) of every job the controller knows (MinJobAge keeps ended ones)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i|%T|%j")
        return [tuple(line.split("|")) for line in out.stdout.split()]  # type: ignore[misc]

    def stop(self) -> None:
        self.run("scancel", "--full", "--user=root")
        kill_pidfile(self.root / "slurmd.pid")
        self.stop_controller()


class Sshd:
    """An sshd on a loopback port with a generated host key, a client key in its
    authorized_keys, and a user certificate authority it trusts (see :meth:`certify`).

    ``extra`` is appended to sshd_config (a jump host that refuses forwarding, say)."""

    def __init__(self, root: Path, slurm_conf: Path, extra: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.slurm_conf = slurm_conf
        self.extra = extra
        self.host_key = root / "hostkey"
        self.client_key = root / "userkey"
        self.user_ca = root / "user_ca"
        self.known_hosts = root / "known_hosts"
        self.authorized_keys = root / "authorized_keys"
        self.config = root / "sshd_config"
        self.process: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        for key in (self.host_key, self.client_key, self.user_ca):
            if not key.exists():
                _keygen(key)
        shutil.copy(f"{self.client_key}.pub", self.authorized_keys)
        public = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        self.config.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {self.authorized_keys}
TrustedUserCAKeys {self.user_ca}.pub
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxSessions 10
MaxStartups 100:30:200
PidFile {self.root}/sshd.pid
SetEnv SLURM_CONF={self.slurm_conf}
Subsystem sftp internal-sftp
{self.extra}
"""
        )

    def start(self) -> None:
        # -D: in the foreground as our child, so stopping it is a plain terminate + wait.
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E", str(self.root / "sshd.log")]
        )
        wait_for("sshd to listen", lambda: port_open(self.port), 15)

    def stop(self) -> None:
        """Stop sshd and every session it serves, as a host going down would."""
        if self.process is None:
            return
        sessions = _children(self.process.pid)
        self.process.terminate()
        self.process.wait(10)
        self.process = None
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def freeze(self) -> list[int]:
        """SIGSTOP sshd and every session it serves (and their commands), as a host stuck in
        I/O: connections stay open and nothing answers. Returns what :meth:`thaw` resumes."""
        assert self.process is not None
        frozen = [self.process.pid]
        for pid in frozen:  # grows as it goes: sessions, then their children
            frozen.extend(_children(pid))
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return frozen

    @staticmethod
    def thaw(frozen: list[int]) -> None:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def new_key(self, name: str, *, authorize: bool = False) -> Path:
        """A fresh client key; listed in authorized_keys only when asked."""
        key = self.root / name
        _keygen(key)
        if authorize:
            with self.authorized_keys.open("a") as keys:
                keys.write(Path(f"{key}.pub").read_text())
        return key

    def certify(self, key: Path, *, principal: str = "root", validity: str = "-5m:+1h") -> Path:
        """An OpenSSH user certificate for ``key``, signed by the CA this sshd trusts.

        It is moved to ``<key>.cert`` so that nothing finds it by the ``-cert.pub`` naming
        convention: a test that logs in with it must have been given it."""
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                str(self.user_ca),
                "-I",
                f"statevisor-test-{key.name}",
                "-n",
                principal,
                "-V",
                validity,
                f"{key}.pub",
            ],
            check=True,
        )
        certificate = key.with_name(f"{key.name}.cert")
        Path(f"{key}-cert.pub").rename(certificate)
        return certificate

    def wrong_known_hosts(self) -> Path:
        """A known_hosts that holds another key for this host's address."""
        other = self.root / "otherkey"
        if not other.exists():
            _keygen(other)
        public = Path(f"{other}.pub").read_text().split()
        path = self.root / "known_hosts.wrong"
        path.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        return path


class Cluster:
    """Munge + Slurm + sshd, as the session fixture starts them."""

    def __init__(self, root: Path) -> None:
        self.munge = Munge()
        self.slurm = Slurm(root / "slurm", self.munge.socket)
        self.sshd = Sshd(root / "sshd", self.slurm.conf)
        self.work_dir = str(root / "work")

    def start(self) -> None:
        self.munge.start()
        self.slurm.start()
        self.sshd.prepare()
        self.sshd.start()

    def stop(self) -> None:
        for stop in (self.sshd.stop, self.slurm.stop, self.munge.stop):
            try:
                stop()
            except Exception as exc:  # stop the rest even if one refuses
                print(f"stopping test cluster: {exc!r}")

    def host_table(self, **overrides: object) -> dict[str, object]:
        table: dict[str, object] = {
            "address": "127.0.0.1",
            "port": self.sshd.port,
            "user": "root",
            "key": str(self.sshd.client_key),
            "agent": False,
            "known_hosts": str(self.sshd.known_hosts),
            "scheduler": "slurm",
            "work_dir": self.work_dir,
            "poll_interval": 0.3,
            "connect_interval": 0.2,
            "connect_timeout": 5.0,
            "keepalive": 2.0,
            "backoff_max": 4.0,
            "retries": 12,
        }
        table.update(overrides)
        return table
