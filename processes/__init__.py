"""statevisor's own process kinds: local shell commands (:mod:`.shell`), batch jobs on HPC
clusters over SSH (:mod:`.batch`), pods on Kubernetes clusters (:mod:`.cloud`), log-apply
machines (:mod:`.logapply`), and an example kind (:mod:`.examples`, the ticker).

Each kind is built on the public API of :mod:`supervisor` and its extension API
(:mod:`supervisor.lowlevel`), and reaches a daemon the way a user's kind does: as an entry point
of group ``statevisor.kinds`` (see ``pyproject.toml``). Nothing of the daemon imports them.
"""
