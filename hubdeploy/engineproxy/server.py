"""The engine proxy's server: HTTP/1.1 on tcp in front of the engine's unix socket.

Framing is h11's (a well-kept, strict-by-design parser), behind a stricter check of each
request head than h11 makes on its own (:func:`check_head`): only CRLF line ends, no bare
CR or LF, no control character, no folded line, one Content-Length or one
``Transfer-Encoding: chunked`` and never both, an origin-form target of visible ASCII.
Whatever fails it is answered 400 and the connection is closed. Each request on a
kept-alive connection is read, checked and decided on its own; bytes after a request are
only ever read as the next request, through the same checks.

An allowed request is sent on a fresh engine connection, rebuilt from what was decided:
the method, the target the policy returned (the object's full id), a fixed set of
headers, and the policy's body (the checked JSON serialised again, or a rebuilt tar),
never the client's bytes. The engine's answer comes back through h11 too. An exec start
is the one hijacked stream: after the engine's 101 the connection carries the process's
stdin and output both ways.

Refusals are answered 403 (404 for objects that do not exist, 400 for malformed
requests) with the engine's JSON error shape, ``{"message": ...}``, which docker-py shows
as the error's explanation, and logged as one line: method, path without its query,
rule. Bodies (which carry the environments of notebooks and execs, tokens included) are
never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import quote

import h11

from hubdeploy.engineproxy.policy import MAX_BODY, Allow, Request, SitePolicy, decide

log = logging.getLogger("hubdeploy.engineproxy")
HEAD_LIMIT = 64 * 1024
# How long a client may take to send a request head, and stay idle between requests.
HEAD_TIMEOUT = 60
# One engine call of the lookup (an inspect); the forwarded request itself is unbounded
# (an exec's stream lasts as long as its process).
LOOKUP_TIMEOUT = 30
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE) (/[\x21-\x7e]*) HTTP/1\.[01]")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")
# Sent on to the engine from the client's head; everything else is dropped (framing and
# connection handling are ours, and nothing else changes what the engine does for us).
_PASSED_HEADERS = {b"user-agent", b"accept"}
_RESPONSE_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"}


class BadRequest(Exception):
    pass


def check_head(head: bytes) -> None:
    """Refuse a request head (up to and including its blank line) that any HTTP parser
    could read as something else: BadRequest with the reason."""
    if not head.endswith(b"\r\n\r\n"):
        raise BadRequest("the request head does not end with CRLF CRLF")
    lines = head[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise BadRequest("bare CR or LF in the request head")
    if not _REQUEST_LINE.fullmatch(lines[0]):
        raise BadRequest("malformed request line")
    seen: dict[bytes, int] = {}
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise BadRequest("malformed or folded header line, or a control character in it")
        name = match.group(1).lower()
        seen[name] = seen.get(name, 0) + 1
        if name == b"transfer-encoding" and match.group(2).lower() != b"chunked":
            raise BadRequest("a Transfer-Encoding other than chunked")
    if seen.get(b"content-length", 0) > 1 or seen.get(b"transfer-encoding", 0) > 1:
        raise BadRequest("a repeated Content-Length or Transfer-Encoding")
    if b"content-length" in seen and b"transfer-encoding" in seen:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if seen.get(b"host", 0) > 1:
        raise BadRequest("a repeated Host header")


def _error(status: int, message: str) -> tuple[h11.Response, bytes]:
    body = json.dumps({"message": message}).encode()
    return h11.Response(status_code=status, headers=[
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]), body


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
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="GET", target=path, headers=[
                ("Host", "docker"), ("Connection", "close")])) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            status, body = 0, bytearray()
            async for event in _events(conn, reader):
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
            return status, bytes(body)
        finally:
            writer.close()

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
            # Bytes read past one request are the start of the next one: each request gets
            # a fresh h11 connection (its state is the request's), fed only after the head
            # passed check_head.
            pending = b""
            while pending is not None:
                pending = await self._one_request(pending, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, h11.ProtocolError) as exc:
            log.debug("connection ended: %s", type(exc).__name__)
        finally:
            writer.close()
            self.connections.discard(task)

    async def _one_request(self, pending: bytes, reader, writer) -> bytes | None:
        """Read, decide and answer one request; the bytes already read past it when the
        connection goes on, None when it ends."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        buf = bytearray(pending)
        while b"\r\n\r\n" not in buf:
            if len(buf) > HEAD_LIMIT:
                await self._send_error(conn, writer, 400, "request head too large")
                return None
            data = await asyncio.wait_for(reader.read(65536), HEAD_TIMEOUT)
            if not data:
                if buf:
                    await self._send_error(conn, writer, 400, "incomplete request head")
                return None
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        try:
            check_head(bytes(buf[:end]))
            conn.receive_data(bytes(buf))
            incoming = await self._read_request(conn, reader)
        except (BadRequest, h11.RemoteProtocolError) as exc:
            await self._send_error(conn, writer, 400, f"hubdeploy engine proxy: {exc}")
            return None
        req = incoming.request
        decision = await self._decide(req)
        if not isinstance(decision, Allow):
            await self._send_error(conn, writer, decision.status,
                                   f"hubdeploy engine proxy refused ({decision.rule}): {decision.reason}")
            return _next(conn)
        if decision.hijack != incoming.upgrade:
            await self._send_error(conn, writer, 400, "Upgrade: tcp is for an exec start, and it needs it")
            return None
        log.debug("allowed %s %s rule=%s", req.method, req.path, decision.rule)
        if await self._forward(decision, incoming, conn, reader, writer):
            return _next(conn)
        return None

    async def _read_request(self, conn: h11.Connection, reader) -> "_Incoming":
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            raise BadRequest("no request in the head")
        body = bytearray()
        while True:
            nxt = conn.next_event()
            if nxt is h11.NEED_DATA:
                # b"" marks EOF: h11 then raises on a cut body.
                conn.receive_data(await asyncio.wait_for(reader.read(65536), HEAD_TIMEOUT))
                continue
            if isinstance(nxt, h11.Data):
                body += nxt.data
                if len(body) > MAX_BODY:
                    raise BadRequest("request body too large")
                continue
            if isinstance(nxt, h11.EndOfMessage) or nxt is h11.PAUSED:
                break
            raise BadRequest("unexpected data in the request")
        upgrade = any(k.lower() == b"upgrade" and v.lower() == b"tcp" for k, v in event.headers)
        path, _, query = event.target.decode("ascii").partition("?")
        return _Incoming(Request(event.method.decode("ascii"), path, query, bytes(body)),
                         [(k, v) for k, v in event.headers if k.lower() in _PASSED_HEADERS], upgrade)

    async def _decide(self, req: Request):
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
            except _NeedLookup:
                if len(facts) > 32:  # a create names a few volumes and networks
                    return _Failed(502, "lookup-chain", "lookup chain too long")
                try:
                    facts[missing[0]] = await self.lookup(*missing[0])
                except (OSError, ValueError, asyncio.TimeoutError) as exc:
                    return _Failed(502, "inspect", f"cannot inspect: {type(exc).__name__}")
                continue
            if not isinstance(decision, Allow):
                if decision.status == 404:
                    # An answer, not a refusal: the backend asks for a container by name
                    # before each start to find a stale one.
                    log.debug("not found %s %s", req.method, req.path)
                else:
                    log.warning("refused %s %s rule=%s: %s", req.method, req.path, decision.rule, decision.reason)
            return decision

    async def _send_error(self, conn: h11.Connection, writer, status: int, message: str) -> None:
        if conn.our_state is not h11.SEND_RESPONSE:
            # h11 never answers a request it could not read: reply by hand, then close.
            body = json.dumps({"message": message}).encode()
            writer.write(f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        else:
            response, body = _error(status, message)
            writer.write(conn.send(response) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _forward(self, decision: Allow, incoming: "_Incoming", conn: h11.Connection, reader, writer) -> bool:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            await self._send_error(conn, writer, 502, f"hubdeploy engine proxy: engine unreachable: {exc}")
            return False
        try:
            up = h11.Connection(h11.CLIENT)
            headers = [("Host", "docker"), *incoming.headers]
            if decision.body is not None:
                kind = "application/x-tar" if decision.rule.startswith("container-archive") else "application/json"
                headers += [("Content-Type", kind), ("Content-Length", str(len(decision.body)))]
            headers += [("Connection", "Upgrade"), ("Upgrade", "tcp")] if decision.hijack else [("Connection", "close")]
            out = up.send(h11.Request(method=incoming.request.method, target=decision.target, headers=headers))
            if decision.body:
                out += up.send(h11.Data(data=decision.body))
            up_writer.write(out + up.send(h11.EndOfMessage()))
            await up_writer.drain()
            return await self._relay(up, up_reader, up_writer, conn, reader, writer, decision.hijack)
        finally:
            up_writer.close()

    async def _relay(self, up, up_reader, up_writer, conn, reader, writer, hijack: bool) -> bool:
        """The engine's answer to the client; whether the client connection goes on."""
        async for event in _events(up, up_reader):
            if isinstance(event, h11.InformationalResponse):
                if not (hijack and event.status_code == 101):
                    continue
                writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
                    (k, v) for k, v in event.headers if k.lower() not in (b"content-length",)])))
                await writer.drain()
                # The process's stream: stdin from the client until it half-closes,
                # output from the engine until the process ends.
                stdin_head, _ = conn.trailing_data
                if stdin_head:
                    up_writer.write(stdin_head)
                tail, _ = up.trailing_data
                if tail:
                    writer.write(tail)
                pump = asyncio.create_task(_copy(reader, up_writer))
                await _copy(up_reader, writer)
                pump.cancel()
                return False
            if isinstance(event, h11.Response):
                headers = [(k, v) for k, v in event.headers if k.lower() not in _RESPONSE_HOP]
                writer.write(conn.send(h11.Response(status_code=event.status_code, headers=headers,
                                                    reason=event.reason)))
            elif isinstance(event, h11.Data):
                writer.write(conn.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


@dataclass(frozen=True)
class _Incoming:
    request: Request
    headers: list[tuple[bytes, bytes]]  # the client's headers that are passed on
    upgrade: bool  # the client asked for Upgrade: tcp (an exec start's stream)


def _next(conn: h11.Connection) -> bytes | None:
    """The bytes read past the request just answered, when the connection may go on."""
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        return conn.trailing_data[0]
    return None


async def _events(conn: h11.Connection, reader: asyncio.StreamReader):
    """h11 events of one message from ``reader``, until the message (or the stream) ends."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return
        yield event
        if isinstance(event, h11.EndOfMessage):
            return


class _NeedLookup(Exception):
    pass


class _Failed:
    """A decision the proxy could not make (the engine did not answer a lookup)."""

    def __init__(self, status: int, rule: str, reason: str):
        self.status, self.rule, self.reason = status, rule, reason


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


async def serve(policy: SitePolicy, socket_path: str, host: str, port: int,
                ready: asyncio.Event | None = None) -> None:
    proxy = EngineProxy(policy, socket_path)
    server = await asyncio.start_server(proxy.handle, host, port, limit=HEAD_LIMIT)
    log.info("engine proxy for site %s on %s:%d -> %s", policy.site, host, port, socket_path)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()
