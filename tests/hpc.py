"""The loopback Slurm + sshd the batch tests run against (it lives in the package: the slurm
benchmark starts one too)."""

from processes.batch.loopback import Cluster, missing_programs

__all__ = ["Cluster", "missing_programs"]
