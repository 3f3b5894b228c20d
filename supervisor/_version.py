"""The version of statevisor (one place: the package, the control protocol's hello and the status read it)."""

__version__ = "0.1.0"
