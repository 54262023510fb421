"""RouteKeepingProxy against a stand-in for configurable-http-proxy's REST API."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("jupyterhub")

from jupyterhub.objects import Hub
from tornado import httpserver, netutil, web

from hubdeploy.hub.proxy import RouteKeepingProxy

TOKEN = "hubdeploy-test-proxy-token"


class Routes(web.RequestHandler):
    """The subset of CHP's /api/routes the hub uses, held in memory as CHP holds it."""

    def initialize(self, table):
        self.table = table

    def prepare(self):
        if self.request.headers.get("Authorization") != f"token {TOKEN}":
            raise web.HTTPError(403)

    def get(self, path):
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.table))

    def post(self, path):
        self.table[path or "/"] = json.loads(self.request.body)
        self.set_status(201)

    def delete(self, path):
        self.table.pop(path or "/", None)
        self.set_status(204)


@pytest.fixture
def fake_chp():
    table: dict = {}
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    app = web.Application([(r"/api/routes(/.*)?", Routes, {"table": table})])
    server = httpserver.HTTPServer(app)
    return table, port, server, sockets


def make_proxy(port, interval):
    hub = Hub(ip="127.0.0.1", port=8081, routespec="/")
    app = SimpleNamespace(users={}, _service_map={}, hub=hub, internal_ssl=False, subdomain_host="")
    return RouteKeepingProxy(
        app=app,
        hub=hub,
        api_url=f"http://127.0.0.1:{port}",
        auth_token=TOKEN,
        route_check_interval=interval,
        log=logging.getLogger("hubdeploy-test-proxy"),
    )


def test_external_by_default():
    proxy = make_proxy(1, 5)
    assert proxy.should_start is False and proxy.route_check_interval == 5


def test_routes_come_back_after_proxy_restart(fake_chp):
    table, port, server, sockets = fake_chp

    async def scenario():
        server.add_sockets(sockets)
        proxy = make_proxy(port, 0.1)
        try:
            await proxy.check_routes(proxy.app.users, proxy.app._service_map)
            assert any(r.get("hub") for r in table.values()), table
            table.clear()  # CHP restarted: its routing table is gone
            for _ in range(50):
                await asyncio.sleep(0.1)
                if table:
                    break
            assert any(r.get("hub") for r in table.values()), "hub route not restored"
        finally:
            proxy.stop_route_checks()
            server.stop()

    asyncio.run(scenario())


def test_periodic_errors_are_logged_not_raised(caplog):
    proxy = make_proxy(1, 0.1)

    async def broken(*args, **kwargs):
        raise ConnectionRefusedError("proxy is down")

    proxy.get_all_routes = broken
    with caplog.at_level(logging.WARNING, logger="hubdeploy-test-proxy"):
        asyncio.run(proxy._periodic_check())
    assert "periodic route check failed" in caplog.text and "proxy is down" in caplog.text
    assert proxy._route_check_running is False
    proxy.stop_route_checks()
