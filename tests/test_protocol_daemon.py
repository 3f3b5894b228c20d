"""The bootloader between two real daemons over a pty: each role declared in its own daemon's
configuration, each daemon SIGKILLed mid-transfer and started again; the transfer completes
from the roles' records, the flash holds the image, no sector is erased after its chunks were
written; both records are runs the specification allows; `statevisor sequence` draws the run,
resumptions included."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from processes.protocol import check_run, read_records
from processes.protocol.examples.bootloader import SPEC, erased_after_written, read_wear_log
from supervisor import decode_record
from tests.test_daemon import ROOT, free_port, kill_if_running, start_daemon, wait_for

IMAGE = 4 << 20
SECTOR = 65536


def write_config(directory: Path, process: list[str]) -> tuple[Path, int]:
    directory.mkdir(mode=0o700)
    port = free_port()
    lines = [
        "[daemon]",
        'store = "var/store.db"',
        'socket = "var/s.sock"',
        f'metrics = "127.0.0.1:{port}"',
        'log_dir = "var/log"',
        'run_dir = "var/runs"',
        'loop = "uvloop"',
        "",
        "[[process]]",
        *process,
    ]
    config = directory / "statevisor.toml"
    config.write_text("\n".join(lines) + "\n")
    return config, port


def ended(store: Path) -> dict[str, Any]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT name, record FROM processes WHERE ended IS NOT NULL").fetchall()
    return {decode_record(blob).name.rpartition("/")[2]: decode_record(blob) for _, blob in rows}


def programs(wear: Path) -> int:
    """Chunks the client's flash has written so far (its wear log grows as it goes)."""
    try:
        return wear.read_text().count("program ")
    except FileNotFoundError:
        return 0


def sigkill(daemon: subprocess.Popen[str]) -> None:
    daemon.send_signal(signal.SIGKILL)
    daemon.communicate(timeout=10)


def test_both_roles_survive_a_sigkill_of_their_daemons_mid_transfer(tmp_path: Path) -> None:
    """The device's daemon is SIGKILLed mid-transfer and started again, then the flasher's: each
    role resumes from its record (replayed through the protocol function, then live); the image
    boots whole, no sector was erased after a chunk was written into it, and the sequence
    command draws the run from the start to the boot."""
    image = bytes((i * 31 + i // 977) % 256 for i in range(IMAGE))
    (tmp_path / "firmware.bin").write_bytes(image)
    flash, wear, link = tmp_path / "flash.bin", tmp_path / "flash.bin.wear", f"pty:{tmp_path / 'ttyFLASH'}"
    common = ['kind = "protocol"', 'restart = "temporary"', "[process.settings]", 'protocol = "bootloader"']
    device, device_port = write_config(tmp_path / "device", [
        'name = "device"', *common, 'role = "client"', f'link = "{link}"',
        f'options = {{ flash = "{flash}", size = {IMAGE}, sector_size = {SECTOR}, wear_log = true }}',
    ])  # fmt: skip
    flasher, flasher_port = write_config(tmp_path / "flasher", [
        'name = "flasher"', *common, 'role = "host"', f'link = "{link}"',
        f'options = {{ image = "{tmp_path / "firmware.bin"}" }}',
    ])  # fmt: skip
    daemons = [start_daemon(device, device_port), start_daemon(flasher, flasher_port)]
    try:
        wait_for(lambda: programs(wear) >= 600, timeout=60)
        sigkill(daemons[0])
        killed_at = programs(wear)
        assert killed_at < IMAGE // 256, "the transfer ended before the kill: make the image larger"
        daemons[0] = start_daemon(device, device_port)
        wait_for(lambda: programs(wear) >= killed_at + 600, timeout=60)
        sigkill(daemons[1])
        assert programs(wear) < IMAGE // 256, "the transfer ended before the kill: make the image larger"
        daemons[1] = start_daemon(flasher, flasher_port)
        stores = (tmp_path / "device" / "var" / "store.db", tmp_path / "flasher" / "var" / "store.db")
        wait_for(lambda: "device" in ended(stores[0]) and "flasher" in ended(stores[1]), timeout=120)
        host, client = ended(stores[1])["flasher"], ended(stores[0])["device"]
        assert ("finished", "boot") == (str(host.lifecycle), host.result["terminal"]), host.error
        assert ("finished", "boot") == (str(client.lifecycle), client.result["terminal"]), client.error
        assert image == flash.read_bytes()[:IMAGE]
        assert [] == erased_after_written(read_wear_log(wear), SECTOR)
        for side in ("device", "flasher"):
            (record,) = (tmp_path / side / "var" / "runs" / "protocol").glob("*.record")
            assert [] == check_run(SPEC, read_records(record)[0]), side  # a run the specification allows
        drawn = subprocess.run(
            [sys.executable, "-m", "supervisor", "sequence", "--socket", str(tmp_path / "flasher" / "var" / "s.sock"),
             "flasher"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert 0 == drawn.returncode, drawn.stderr
        assert drawn.stdout.startswith("sequenceDiagram\n")
        assert "Note over host,client: resumed from" in drawn.stdout
        assert "boot: Boot(digest=b[32])" in drawn.stdout
        assert "Note over host,client: done at boot" in drawn.stdout
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.communicate(timeout=30)
            kill_if_running(daemon)
