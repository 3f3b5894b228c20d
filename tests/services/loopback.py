"""What the launchers of real services on loopback share (Slurm and sshd, Grid Engine, NATS):
choosing free ports, waiting on a condition, asking whether a port answers. Standard library
only; used by the tests and the benchmarks."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all held at once while chosen (one socket closed
    before the next is bound may hand the same port out twice)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds, polling; raise TimeoutError naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    """Something listens on this loopback port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
