"""The extension API: what a process kind (``processes/``, or a user's package) builds on
beyond the names users write machines with.

Kinds start programs, keep files and talk to backends; these are the runtime's own tools for
that, kept here so that the public ``supervisor`` namespace stays what users need.
"""

from ._files.private import private_directory, private_file, tighten

__all__ = [
    # files that hold state or secrets: owner-only whatever the umask
    "private_directory",
    "private_file",
    "tighten",
]
