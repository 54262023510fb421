"""The requests the backends make of the engine, recorded without an engine.

A ``requests`` transport adapter mounted on docker-py's client answers each call with a
plausible reply and records the request as :class:`hubdeploy.engineproxy.policy.Request`
(method, path, query, body): the very bytes the SDK would send, which the policy tests
then decide on. The real engine and the real proxy meet in
tests/integration/test_engine_proxy.py and test_engine_proxy_differential.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from types import SimpleNamespace
from urllib.parse import urlsplit

import docker
import requests
from requests.adapters import BaseAdapter

from hubdeploy.engineproxy.policy import Request

PASSWD = "root:x:0:0:root:/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n"
GROUP = "root:x:0:\nusers:x:100:\n"


def _etc_tar(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = (PASSWD if path.endswith("passwd") else GROUP).encode()
        info = tarfile.TarInfo(path.rsplit("/", 1)[1])
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Recorder(BaseAdapter):
    def __init__(self):
        super().__init__()
        self.requests: list[Request] = []

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = b"".join(body)
        self.requests.append(Request(request.method, url.path, url.query, body))
        status, payload, headers = self.answer(request.method, url.path, url.query)
        resp = requests.Response()
        resp.status_code = status
        resp._content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        resp._content_consumed = True
        # docker-py reaches for the socket under a streamed answer (get_archive).
        resp.raw = SimpleNamespace(_fp=SimpleNamespace(fp=SimpleNamespace(raw=SimpleNamespace())))
        resp.headers.update(headers)
        resp.url = request.url
        resp.request = request
        return resp

    def answer(self, method: str, path: str, query: str):
        parts = [p for p in path.split("/") if p][1:]  # drop /v1.41
        if parts[-1:] == ["create"]:
            return 201, {"Id": "c" * 64, "ID": "s" * 25}, {}
        if parts[:1] == ["containers"] and parts[-1:] == ["archive"] and method == "GET":
            from urllib.parse import parse_qs
            return 200, _etc_tar(parse_qs(query)["path"][0]), {"X-Docker-Container-Path-Stat": "e30="}
        if parts[:1] == ["containers"] and parts[-1:] == ["json"] and len(parts) == 3:
            return 200, {"Id": "c" * 64, "Name": "/x", "Config": {"Labels": {}}, "State": {"Status": "created"}}, {}
        if parts in (["configs"], ["services"], ["tasks"], ["containers", "json"]):
            return 200, [], {}
        if parts[:1] == ["configs"] and len(parts) == 2:
            return 200, {"ID": parts[1], "Spec": {"Name": parts[1], "Labels": {}}}, {}
        return 204 if method in ("POST", "PUT", "DELETE") else 200, b"", {}

    def close(self):
        pass


def recording_client() -> tuple[docker.DockerClient, Recorder]:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.41")
    rec = Recorder()
    client.api.mount("http://", rec)
    client.api.mount("http+docker://", rec)
    return client, rec
