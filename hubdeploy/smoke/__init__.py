"""The engine of ``hubdeploy smoke``: prove a running hub works by doing what a user does.

- ``hubclient``: the hub's REST API (login form, users, tokens, named servers);
- ``kernel``: a single-user server's kernels, over REST and the kernel websocket;
- ``report``: steps and their JSON / JUnit / table forms;
- ``run``: ``run_smoke``, which ties them together and never raises for a failed step.
"""

from hubdeploy.contract.services import SMOKE_USER
from hubdeploy.smoke.hubclient import SMOKE_SERVICE_SCOPES
from hubdeploy.smoke.kernel import CHECKS, KernelCheck
from hubdeploy.smoke.report import SmokeReport, Step
from hubdeploy.smoke.run import run_smoke

__all__ = ["CHECKS", "SMOKE_SERVICE_SCOPES", "SMOKE_USER", "KernelCheck", "SmokeReport", "Step", "run_smoke"]
