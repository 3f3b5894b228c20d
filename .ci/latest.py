"""Helpers for `bash .ci/test --latest`: compare a venv with the lock, read pytest's JUnit report.

Run with the venv's own Python (it needs `packaging`, which pytest brings):
  python .ci/latest.py differ LOCK        one line "name locked newest" per package that differs
  python .ci/latest.py failed JUNIT_XML   the node id of every test that failed or errored
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import distributions
from pathlib import Path

from packaging.markers import Marker

PROJECT = "statevisor"
ABSENT = "-"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    """The lock's pins that apply to this interpreter and platform (the lock is universal)."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;([^\\]*))?", line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker is None or Marker(marker.strip()).evaluate():
            pins[normalize(name)] = version
    return pins


def installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) != PROJECT:
            found[normalize(name)] = dist.version
    return found


def differ(lock: Path) -> None:
    locked = locked_versions(lock)
    installed = installed_versions()
    for name in sorted(locked.keys() | installed.keys()):
        old, new = locked.get(name, ABSENT), installed.get(name, ABSENT)
        if old != new:
            print(name, old, new)


def node_id(classname: str, name: str) -> str:
    """Rebuild a pytest node id from JUnit's dotted classname and name.

    The dotted prefix that names an existing file is the module; what follows is the class path.
    (The `file` attribute is no help: it names where a test is defined, which for an inherited
    test is not the module that collected it.)
    """
    if not classname:  # a collection error: name is the module itself
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if Path(path).is_file():
            return "::".join([path, *parts[cut:], name])
    return "::".join([classname.replace(".", "/") + ".py", name])


def failed(report: Path) -> None:
    seen: set[str] = set()
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        nid = node_id(case.get("classname", ""), case.get("name", ""))
        if nid not in seen:
            seen.add(nid)
            print(nid)


def main() -> None:
    match sys.argv[1:]:
        case ["differ", lock]:
            differ(Path(lock))
        case ["failed", report]:
            failed(Path(report))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
