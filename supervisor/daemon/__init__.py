"""The daemon: its configuration file, its service loop (signals, the control socket, metrics,
systemd), its own log and the watchdog of its event loop. ``statevisor daemon`` runs it;
:func:`run` is the same from Python."""

from .config import Config, ConfigFileError, load
from .service import run, serve
from .watchdog import LoopWatchdog

__all__ = ["Config", "ConfigFileError", "LoopWatchdog", "load", "run", "serve"]
