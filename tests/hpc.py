"""The loopback Slurm + sshd the batch tests run against (it lives in the package: the slurm
benchmark starts one too)."""

from processes.batch.loopback import Cluster, Sshd, missing_programs, wait_for

__all__ = ["Cluster", "Sshd", "missing_programs", "wait_for"]
