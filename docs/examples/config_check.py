"""The configuration is checked whole before anything starts: every mistake, with file and line.

``statevisor daemon`` prints the same lines and exits 2 without starting anything.
"""

import tempfile
from pathlib import Path

from supervisor.daemon import ConfigFileError, load

BROKEN = """\
[daemon]
store = "var/statevisor.db"
log_level = "loud"

[[process]]
name = "heartbeat"
kind = "ticker"
restart = "sometimes"
[process.settings]
interval = "fast"

[[process]]
name = "report"
kind = "shell"
depends_on = ["nightly"]
[process.settings]
argv = "df -h"
"""
FIXES = {
    '"loud"': '"info"',
    '"sometimes"': '"transient"',
    '"fast"': "5.0",
    '"nightly"': '"heartbeat"',
    '"df -h"': '["df", "-h"]',
}

with tempfile.TemporaryDirectory() as directory:
    path = Path(directory) / "statevisor.toml"
    path.write_text(BROKEN)
    try:
        load(path)
    except ConfigFileError as exc:
        for error in exc.errors:
            print(f"line {error.line}: {error.key}: {error.problem}")

    fixed = BROKEN
    for wrong, right in FIXES.items():
        fixed = fixed.replace(wrong, right)
    path.write_text(fixed)
    config = load(path)
    print([(p.name, p.kind, str(p.restart), p.depends_on) for p in config.processes])
    print("store:", config.daemon.store.relative_to(path.parent), "| kinds:", ", ".join(sorted(config.catalog.kinds)))
