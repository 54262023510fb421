"""``hubdeploy logs --user`` against recorded engine answers: which container's or
service's log is read for each backend's server. The real thing runs in
tests/integration/test_swarm_stack.py."""

from __future__ import annotations

import io
import json
import struct
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import docker
import pytest
import requests
from requests.adapters import BaseAdapter

from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import SWARM
from hubdeploy.contract.labels import SWARM_SERVICE_ID
from hubdeploy.errors import OperationError
from hubdeploy.ops import engine, servers, userlogs

SERVICE = "svc0123456789abcdefghijkl"
TASK = "t" * 64
ROW = protocol.row(SWARM, id=SERVICE, name="hubdeploy-s-nb-ann", state="running", tracked=True, owner="ann")


def _frames(*lines: bytes) -> bytes:
    """The engine's multiplexed log stream (stdout frames) of a container without a TTY."""
    return b"".join(struct.pack(">BxxxL", 1, len(line)) + line for line in lines)


class SwarmEngine(BaseAdapter):
    """A manager whose service SERVICE has one task, whose container runs on this engine
    (``local``) or on another node (then only the service's log reaches it)."""

    def __init__(self, local: bool):
        super().__init__()
        self.local = local
        self.asked: list[tuple[str, str, dict]] = []

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        path = [p for p in url.path.split("/") if p][1:]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.asked.append((request.method, "/".join(path), query))
        status, payload = self.answer(path, query)
        resp = requests.Response()
        resp.status_code, resp.url, resp.request = status, request.url, request
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        resp._content, resp._content_consumed = data, True
        # docker-py reads a streamed log from the raw response.
        stream = io.BytesIO(data)
        resp.raw = SimpleNamespace(read=stream.read, _fp=SimpleNamespace(fp=SimpleNamespace(raw=SimpleNamespace())))
        return resp

    def answer(self, path, query):
        if path == ["containers", "json"]:
            labels = json.loads(query["filters"])["label"]
            mine = labels == [f"{SWARM_SERVICE_ID}={SERVICE}"] and self.local
            return 200, [{"Id": TASK, "Names": ["/hubdeploy-s-nb-ann.1.x"], "State": "running"}] if mine else []
        if path == ["containers", TASK, "json"]:
            return 200, {"Id": TASK, "Name": "/hubdeploy-s-nb-ann.1.x", "Config": {"Tty": False, "Labels": {}},
                         "State": {"Status": "running"}, "Created": "2026-01-01T00:00:00Z"}
        if path == ["containers", TASK, "logs"]:
            return 200, _frames(b"from the task's container\n")
        if path == ["services", SERVICE]:
            return 200, {"ID": SERVICE, "Spec": {"Name": ROW["name"], "TaskTemplate": {"ContainerSpec": {}}}}
        if path == ["services", SERVICE, "logs"]:
            return 200, _frames(b"from the service's log\n")
        return 404, {"message": "no such object"}

    def close(self):
        pass


def _logs(monkeypatch, adapter, **kwargs) -> bytes:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.41")
    client.api.mount("http://", adapter)
    monkeypatch.setattr(engine, "docker_client", lambda: client)
    monkeypatch.setattr(servers, "orphans", lambda prep, client=None: {"servers": [ROW]})
    out = io.BytesIO()
    assert userlogs.user_logs(SimpleNamespace(), "ann", "", follow=False, tail="20", write=out.write, **kwargs) == 0
    return out.getvalue()


def test_a_swarm_servers_log_is_its_task_containers(monkeypatch):
    adapter = SwarmEngine(local=True)
    assert _logs(monkeypatch, adapter) == b"from the task's container\n"
    # Found by swarm's own label for the service, never by a name a user could take.
    lists = [q for m, p, q in adapter.asked if p == "containers/json"]
    assert [json.loads(q["filters"]) for q in lists] == [{"label": [f"{SWARM_SERVICE_ID}={SERVICE}"]}]
    assert ("GET", f"containers/{TASK}/logs", {"stdout": "1", "stderr": "1", "timestamps": "0", "follow": "0",
                                              "tail": "20"}) in adapter.asked


def test_a_task_on_another_node_is_read_through_the_manager(monkeypatch):
    adapter = SwarmEngine(local=False)
    assert _logs(monkeypatch, adapter) == b"from the service's log\n"
    (query,) = [q for m, p, q in adapter.asked if p == f"services/{SERVICE}/logs"]
    # docker-py spells this endpoint's booleans True/False.
    assert query["tail"] == "20" and query["stdout"] == query["stderr"] == "True"


def test_a_removed_service_says_so(monkeypatch):
    adapter = SwarmEngine(local=False)
    adapter.answer = lambda path, query: (200, []) if path == ["containers", "json"] else (404, {"message": "gone"})
    with pytest.raises(OperationError, match="hubdeploy-s-nb-ann is gone"):
        _logs(monkeypatch, adapter)
