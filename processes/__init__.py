"""statevisor's process kinds (local shell, scheduler, cloud, log-apply).

Each kind is a :class:`supervisor.Machine` plus the executors for its actions, built only on
the public API of :mod:`supervisor`.
"""

__all__: list[str] = []
