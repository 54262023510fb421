"""configurable-http-proxy run as its own container, with routes restored within seconds.

CHP keeps its routing table in memory. When the proxy container restarts (a crash, an
upgrade, ``docker restart``) it comes back empty, and JupyterHub only re-adds routes from
``check_routes``, which it calls at start-up and then only every
``JupyterHub.last_activity_interval`` (5 minutes by default). For those minutes every user
gets the hub's "server not running" page although their server runs. This class checks
the routes every ``route_check_interval`` seconds instead.
"""

from __future__ import annotations

from jupyterhub.proxy import ConfigurableHTTPProxy
from tornado.ioloop import PeriodicCallback
from traitlets import Any, Bool, Float, default


class RouteKeepingProxy(ConfigurableHTTPProxy):
    """ConfigurableHTTPProxy for an externally managed CHP that re-checks routes often."""

    route_check_interval = Float(
        help="Seconds between checks that the proxy has every route (0 disables them), "
        "from hub.json proxy.route_check_interval (the site's proxy.route_check_interval). "
        "A check is one GET of the proxy's route table; missing routes are added back.",
    ).tag(config=True)

    _route_checker = Any(allow_none=True)
    _route_check_running = Bool(False)

    @default("should_start")
    def _default_should_start(self):
        return False

    async def check_routes(self, user_dict, service_dict, routes=None):
        """JupyterHub's route check; the first call also starts the periodic checks."""
        # Started here rather than in __init__: the hub calls check_routes once its users
        # and services are loaded, so the periodic checks never see a half-built hub.
        if self._route_checker is None and self.route_check_interval > 0:
            self._route_checker = PeriodicCallback(self._periodic_check, 1e3 * self.route_check_interval)
            self._route_checker.start()
        return await super().check_routes(user_dict, service_dict, routes)

    async def _periodic_check(self):
        if self._route_check_running:
            return  # a slow or unreachable proxy must not pile up checks
        self._route_check_running = True
        try:
            await self.check_routes(self.app.users, self.app._service_map)
        except Exception as exc:  # noqa: BLE001
            # The proxy being down is the very situation this is for: log, retry next time.
            self.log.warning("periodic route check failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._route_check_running = False

    def stop_route_checks(self) -> None:
        """Stop the periodic checks (tests, hub shutdown)."""
        if self._route_checker is not None:
            self._route_checker.stop()
            self._route_checker = None
