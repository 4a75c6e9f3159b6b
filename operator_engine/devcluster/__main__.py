"""``python -m operator_engine.devcluster --port N --kubeconfig PATH``: serve until killed."""

from __future__ import annotations

import argparse
import asyncio
import signal

from operator_engine.devcluster.cluster import EmbeddedCluster


async def serve(port: int | None, kubeconfig_path: str | None, namespace: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with EmbeddedCluster(namespace=namespace, port=port) as cluster:
        if kubeconfig_path:
            cluster.write_kubeconfig(kubeconfig_path)
        print(
            f"embedded cluster serving at {cluster.url}"
            + (f"; kubeconfig: {kubeconfig_path}" if kubeconfig_path else ""),
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m operator_engine.devcluster", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--kubeconfig", default=None, help="write a kubeconfig for this cluster here")
    parser.add_argument("--namespace", default="ocean-compute", help="namespace to create (default: %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.kubeconfig, args.namespace))


if __name__ == "__main__":
    main()
