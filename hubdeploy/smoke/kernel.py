"""Run code in a kernel of a running single-user server, as JupyterLab does.

REST (``/api/kernelspecs``, ``/api/kernels``) for the kernel's life, the kernel websocket
(``/api/kernels/{id}/channels``) for ``execute_request``. Messages are built with
``jupyter_client.session.Session`` and sent as JSON text frames (the websocket protocol
every jupyter_server speaks when no subprotocol is asked for). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import dataclass

import requests
import websocket
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session


@dataclass(frozen=True)
class KernelCheck:
    """Code to run and the line its output must contain (None: only that it runs)."""

    code: str
    expected: str | None


# Keyed by the kernelspec's `language`, lower-cased. The check is TLJH's: 5 * 4 == 20.
CHECKS: dict[str, KernelCheck] = {
    "python": KernelCheck("print(5 * 4)", "20"),
    "r": KernelCheck("cat(5 * 4)", "20"),
    "bash": KernelCheck("echo $((5 * 4))", "20"),
    "julia": KernelCheck("println(5 * 4)", "20"),
}

# For a language without a check, an empty cell: every kernel answers it with an
# execute_reply, which proves the kernel started and talks, and nothing more.
EMPTY_CHECK = KernelCheck("", None)


def check_for(language: str, checks: dict[str, KernelCheck] | None = None) -> tuple[KernelCheck, bool]:
    """The check for a language and whether it is a real one (False: EMPTY_CHECK)."""
    table = {**CHECKS, **{k.lower(): v for k, v in (checks or {}).items()}}
    check = table.get((language or "").lower())
    return (check, True) if check else (EMPTY_CHECK, False)


def output_matches(output: str, expected: str | None) -> bool:
    """True if a line of the output, stripped, is the expected value."""
    return expected is None or any(line.strip() == expected for line in output.splitlines())


class KernelError(Exception):
    """A kernel request failed or timed out (the message never holds a token)."""


class ServerClient:
    """The REST and websocket API of one single-user server, with a user's token."""

    def __init__(self, server_url: str, token: str, *, verify: bool | str = True,
                 request_timeout: float = 30.0):
        self.server_url = server_url.rstrip("/") + "/"
        self.verify = verify
        self.request_timeout = request_timeout
        self._token = token
        self.http = requests.Session()
        self.http.verify = verify
        self.http.headers["Authorization"] = f"token {token}"

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, ok=(200, 201, 204), **kw) -> requests.Response:
        kw.setdefault("timeout", self.request_timeout)
        try:
            kw.setdefault("verify", self.verify)  # see HubClient.request: beat REQUESTS_CA_BUNDLE
            resp = self.http.request(method, self.server_url + path, **kw)
        except requests.RequestException as exc:
            raise KernelError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code not in ok:
            raise KernelError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp

    def kernelspecs(self) -> dict[str, str]:
        """Installed kernelspecs: {name: language}."""
        specs = self._request("GET", "api/kernelspecs").json().get("kernelspecs", {})
        return {name: (model.get("spec") or {}).get("language", "") for name, model in sorted(specs.items())}

    def start_kernel(self, name: str) -> str:
        """Start a kernel from a kernelspec; returns its id."""
        return self._request("POST", "api/kernels", json={"name": name}).json()["id"]

    def delete_kernel(self, kernel_id: str) -> None:
        self._request("DELETE", f"api/kernels/{kernel_id}", ok=(204, 404))

    def _ws_url(self, kernel_id: str, session_id: str) -> str:
        base = "ws" + self.server_url[len("http"):]  # http -> ws, https -> wss
        return f"{base}api/kernels/{kernel_id}/channels?session_id={session_id}"

    def _sslopt(self) -> dict:
        if self.verify is False:
            return {"cert_reqs": ssl.CERT_NONE}
        if isinstance(self.verify, str):
            return {"ca_certs": self.verify}
        # Trust what requests trusts, so a site CA bundle works for both transports.
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        return {"ca_certs": bundle} if bundle else {}

    def execute(self, kernel_id: str, code: str, *, timeout: float = 60.0) -> tuple[str, str | None]:
        """Run ``code``; return (output text, error or None).

        Output is stream text and text/plain results in the order they came. The error is
        the kernel's ``ename: evalue`` or the reply's status when it is not ok. Raises
        KernelError when the socket fails or the reply and idle status do not arrive
        within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        session = Session(username="hubdeploy-smoke")
        msg = session.msg("execute_request", content={
            "code": code, "silent": False, "store_history": False,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg["channel"] = "shell"
        msg_id = msg["header"]["msg_id"]
        try:
            ws = websocket.create_connection(
                self._ws_url(kernel_id, session.session),
                header=[f"Authorization: token {self._token}"],
                # No Origin header: not a browser, and a proxy may rewrite the host.
                suppress_origin=True, timeout=min(timeout, self.request_timeout),
                sslopt=self._sslopt(),
            )
        except (websocket.WebSocketException, OSError) as exc:
            raise KernelError(f"kernel websocket: {type(exc).__name__}: {exc}") from None
        try:
            ws.send(json.dumps(msg, default=json_default))
            return _collect(ws, msg_id, deadline)
        finally:
            ws.close()


def _collect(ws, msg_id: str, deadline: float) -> tuple[str, str | None]:
    """Read replies to ``msg_id`` until the execute_reply and the idle status are both in."""
    out: list[str] = []
    error = None
    replied = idle = False
    while not (replied and idle):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KernelError(f"no {'reply' if not replied else 'idle status'} in time; output so far: "
                              f"{''.join(out)[-300:]!r}")
        ws.settimeout(remaining)
        try:
            frame = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (websocket.WebSocketException, OSError) as exc:
            raise KernelError(f"kernel websocket: {type(exc).__name__}: {exc}") from None
        if not isinstance(frame, str):
            continue  # binary frames carry buffers; a check produces none
        reply = json.loads(frame)
        if (reply.get("parent_header") or {}).get("msg_id") != msg_id:
            continue
        kind, content = reply.get("msg_type"), reply.get("content") or {}
        if kind == "stream":
            out.append(content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            text = (content.get("data") or {}).get("text/plain", "")
            out.append(text if text.endswith("\n") else text + "\n")
        elif kind == "error":
            error = f"{content.get('ename')}: {content.get('evalue')}"
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
        elif kind == "execute_reply":
            replied = True
            if content.get("status") != "ok" and error is None:
                error = f"execute_reply status {content.get('status')}"
    return "".join(out), error
