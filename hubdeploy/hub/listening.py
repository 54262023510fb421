"""Waiting for a starting notebook server to listen, without keeping the hub busy.

JupyterHub's own readiness check backs off exponentially (0.2, 0.4, 0.8, 1.6 s...), which
alone added about a second to every spawn; the spawner waits here first
(:meth:`hubdeploy.hub.spawner.HubdeploySpawner._await_listening`), so JupyterHub's check
succeeds at its first try.
"""

from __future__ import annotations

import asyncio
import socket

# Bounds of the interval between connection attempts to a starting server (seconds).
LISTEN_POLL_MIN, LISTEN_POLL_MAX = 0.05, 0.5


def listen_poll_interval(elapsed: float) -> float:
    """Seconds between connection attempts to a starting server, ``elapsed`` s into the
    wait: 50 ms for the first second, then a twentieth of the time so far (a server
    that took 10 s is found at most 5% later), never more than 0.5 s."""
    return min(LISTEN_POLL_MAX, max(LISTEN_POLL_MIN, elapsed / 20))


async def _resolve(host: str, port: int) -> str:
    """The first address of ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    return infos[0][4][0]


async def wait_listening(host: str, port: int, timeout: float) -> bool:
    """True as soon as ``host:port`` accepts connections; False after ``timeout`` s.

    The name is resolved once (a lookup is a thread of the hub's default pool and a query
    to the engine's DNS), then the address is tried every :func:`listen_poll_interval`
    seconds: 50 ms at first, longer as the start takes longer, so a storm of slow starts
    does not keep the hub busy with connects.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    address = None
    while loop.time() < deadline:
        try:
            if address is None:
                address = await _resolve(host, port)
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout=1)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(listen_poll_interval(loop.time() - started))
            continue
        writer.close()
        return True
    return False
