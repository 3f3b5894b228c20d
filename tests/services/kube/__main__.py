"""``python -m tests.services.kube``: run the fake API server (see :class:`FakeKube`, which starts it).

Serves the Kubernetes API on ``--port`` (HTTPS with ``--cert``/``--key``; client certificates
signed by ``--client-ca`` authenticate) and the control calls on ``--control-port``, both on
127.0.0.1, until SIGTERM; then every pod's processes are killed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from ._api import ApiServer
from ._control import Control
from ._http import HttpServer, tls_context


async def main(args: argparse.Namespace) -> None:
    tokens = dict(item.split("=", 1) for item in args.token)  # TOKEN=user
    api = ApiServer(tokens=tokens, bookmark_interval=args.bookmark_interval, write_latency=args.write_latency)
    tls = tls_context(args.cert, args.key, args.client_ca) if args.cert else None
    server = HttpServer(api.handle, args.port, tls)
    control = HttpServer(Control(api, server).handle, args.control_port)
    await server.start()
    await control.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await control.stop()
    await server.stop()
    await api.kubelet.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.services.kube")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--token", action="append", default=[], help="TOKEN=user (repeatable)")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    parser.add_argument("--write-latency", type=float, default=0.0, help="seconds a write takes to commit")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))
