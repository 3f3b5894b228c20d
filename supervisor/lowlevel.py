"""The extension API: what a process kind (``processes/``, or a user's own package) builds on
beyond the names users write machines with.

Kinds start programs, keep files and talk to backends; these are the runtime's own tools for
that, kept here so that the public :mod:`supervisor` namespace stays what users need:

* **values** as checkpoints carry them: :func:`pack` and :func:`unpack` encode and decode
  exactly as a checkpoint does (bytes stay bytes, strings stay strings), so an entry log or a
  message on a wire round-trips the same values a state holds;
* **files** that hold state or secrets, owner-only whatever the umask
  (:func:`private_directory`, :func:`private_file`, :func:`tighten`);
* **output logs** a process's commands write: size-capped rotation (:func:`rotate_log`) and
  reading them, the last lines and new ones as they come, across rotations
  (:func:`tail_lines`, :func:`follow_lines`);
* **open files**: the limit a kind gives the programs it starts, the one the daemon was started
  with rather than the one it raised for itself (:func:`open_files_for_children`).

A kind reaches a daemon as an entry point of group ``statevisor.kinds`` (or a configuration's
``[kinds]`` table): a :class:`~supervisor.Machine` subclass, or a :class:`Kind` when its machine
or executors need the daemon's settings (built from a :class:`KindSetup`).

A kind's errors derive from the core's bases (:class:`~supervisor.BackendError`,
:class:`~supervisor.TransportError`, :class:`~supervisor.ConfigurationError`) in a module of
its own, with its hierarchy drawn at the top.
"""

from ._core.state import pack, unpack
from ._files.logrotation import rotate_log
from ._files.logtail import follow_lines, tail_lines
from ._files.open_files import OpenFilesLimit, open_files_for_children, raise_open_files_limit
from ._files.private import private_directory, private_file, tighten
from ._supervision.kind import Kind, KindSetup, MachineKind

__all__ = [
    # a kind as a daemon loads it
    "Kind",
    "KindSetup",
    "MachineKind",
    # values as checkpoints carry them
    "pack",
    "unpack",
    # files that hold state or secrets
    "private_directory",
    "private_file",
    "tighten",
    # output logs
    "rotate_log",
    "tail_lines",
    "follow_lines",
    # open files
    "OpenFilesLimit",
    "open_files_for_children",
    "raise_open_files_limit",
]
