"""The engine proxy's server: HTTP/1.1 on tcp in front of the engine's unix socket.

One request per client connection: the request (head and whole body) is read, decided by
:func:`~hubdeploy.engineproxy.policy.decide`, and forwarded with ``Connection: close``
on a fresh connection to the engine, whose answer is copied back until the engine closes.
Nothing the client sends after its request reaches the engine, so a second request can
never ride past the check on a kept-alive connection; the one exception is a hijacked
stream (exec start, attach), where the bytes that follow are the process's stdin.

Refusals are answered 403 (404 for objects that do not exist) with the engine's JSON
error shape, ``{"message": ...}``, which docker-py shows as the error's explanation, and
logged as one line: method, path without its query, rule. Bodies (which carry the
environments of notebooks and execs, tokens included) are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote

from hubdeploy.engineproxy.policy import MAX_BODY, Allow, Request, SitePolicy, decide

log = logging.getLogger("hubdeploy.engineproxy")
HEAD_LIMIT = 64 * 1024
# Dropped from the forwarded head: we set framing and connection handling ourselves.
_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "host"}
# One engine call of the lookup (an inspect); the forwarded request itself is unbounded
# (wait, logs --follow and exec streams last as long as their process).
LOOKUP_TIMEOUT = 30


class BadRequest(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, str, list[tuple[str, str]]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = raw.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("malformed request line") from None
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return method, target, version, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise BadRequest("request body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise BadRequest("request body too large")
    return await reader.readexactly(length) if length else b""


def _response(status: int, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 502: "Bad Gateway"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class EngineProxy:
    def __init__(self, policy: SitePolicy, socket_path: str):
        self.policy = policy
        self.socket_path = socket_path
        # Every connection's task, held here until it ends. asyncio holds a handler task
        # only through its client's transport, and the engine's stream reader only weakly:
        # once the client has half-closed (an exec's stdin at EOF) and the engine has not
        # yet answered, nothing the loop holds reaches the task, and the garbage collector
        # may destroy it mid-stream: the engine's side is closed and the exec ends with
        # 126 and no output.
        self.connections: set[asyncio.Task] = set()

    # -- the engine -----------------------------------------------------------------------

    async def _engine_get(self, path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(None, 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body

    async def lookup(self, kind: str, ref: str) -> dict | None:
        """The engine's inspect document of a container, exec, network or volume; None if absent."""
        path = {"container": "/containers/{}/json", "exec": "/exec/{}/json", "network": "/networks/{}",
                "volume": "/volumes/{}", "service": "/services/{}", "config": "/configs/{}"}[kind]
        status, body = await asyncio.wait_for(self._engine_get(path.format(quote(ref, safe=""))), LOOKUP_TIMEOUT)
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"engine answered {status} to inspect {kind}")
        return json.loads(body)

    # -- one client connection ------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.debug("connection ended: %s", type(exc).__name__)
        finally:
            writer.close()
            self.connections.discard(task)

    async def _handle(self, reader, writer) -> None:
        try:
            method, target, version, headers = await _read_head(reader)
            hdict = {k.lower(): v for k, v in headers}
            body = await _read_body(reader, hdict)
        except (BadRequest, ValueError) as exc:
            writer.write(_response(400, f"hubdeploy engine proxy: {exc}"))
            await writer.drain()
            return
        path, _, query = target.partition("?")
        req = Request(method.upper(), path, query, body)
        # Lookups are async; the policy is synchronous: fetch what it asks for first.
        facts: dict[tuple[str, str], dict | None] = {}
        while True:
            missing: list[tuple[str, str]] = []

            def lookup(kind: str, ref: str):
                if (kind, ref) not in facts:
                    missing.append((kind, ref))
                    raise _NeedLookup
                return facts[(kind, ref)]

            try:
                decision = decide(req, self.policy, lookup)
                break
            except _NeedLookup:
                if len(facts) > 32:  # a create names a few volumes and networks
                    raise OSError("lookup chain too long") from None
                try:
                    facts[missing[0]] = await self.lookup(*missing[0])
                except (OSError, ValueError, asyncio.TimeoutError) as exc:
                    writer.write(_response(502, f"hubdeploy engine proxy: cannot inspect: {type(exc).__name__}"))
                    await writer.drain()
                    return
        if not isinstance(decision, Allow):
            if decision.status == 404:
                # An answer, not a refusal: the backend asks for a container by name
                # before each start to find a stale one.
                log.debug("not found %s %s", req.method, path)
            else:
                log.warning("refused %s %s rule=%s: %s", req.method, path, decision.rule, decision.reason)
            writer.write(_response(decision.status, f"hubdeploy engine proxy refused ({decision.rule}): {decision.reason}"))
            await writer.drain()
            return
        log.debug("allowed %s %s rule=%s", req.method, path, decision.rule)
        await self._forward(decision, req, version, headers, body, reader, writer)

    async def _forward(self, decision: Allow, req: Request, version: str, headers, body: bytes,
                       reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            kept = [(k, v) for k, v in headers if k.lower() not in _HOP]
            if decision.hijack:
                kept += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
            else:
                kept.append(("Connection", "close"))
            head = f"{req.method} {decision.target} {version}\r\nHost: docker\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in kept)
            head += f"Content-Length: {len(body)}\r\n\r\n"
            up_writer.write(head.encode("latin-1") + body)
            await up_writer.drain()
            if decision.hijack and await _upgraded(up_reader, writer):
                # stdin for the process until the client half-closes; output until the engine ends.
                up = asyncio.create_task(_copy(reader, up_writer))
                await _copy(up_reader, writer)
                up.cancel()
            else:
                await _copy(up_reader, writer)
        finally:
            up_writer.close()


async def _upgraded(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Pass the engine's response head on; True when the engine took the connection over
    (101, or 200 with a raw stream from older engines). Only then are the client's further
    bytes the process's stdin; after an error they would be a next, unchecked request."""
    head = await up_reader.readuntil(b"\r\n\r\n")
    writer.write(head)
    await writer.drain()
    status = int(head.split(None, 2)[1])
    lower = head.lower()
    return status == 101 or (status == 200 and b"application/vnd.docker." in lower and b"stream" in lower)


class _NeedLookup(Exception):
    pass


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (half-close), as the exec stream needs."""
    try:
        while True:
            chunk = await src.read(65536)
            if not chunk:
                break
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        pass


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, _, rest = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


async def serve(policy: SitePolicy, socket_path: str, host: str, port: int,
                ready: asyncio.Event | None = None) -> None:
    proxy = EngineProxy(policy, socket_path)
    server = await asyncio.start_server(proxy.handle, host, port, limit=HEAD_LIMIT)
    log.info("engine proxy for site %s on %s:%d -> %s", policy.site, host, port, socket_path)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()
