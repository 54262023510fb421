"""``orchestrator: compose``: the stack as a Docker Compose project on this engine,
driven through the compose CLI (:func:`hubdeploy.ops.engine.compose`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubdeploy.errors import OperationError
from hubdeploy.ops import engine, stackdeploy, swarm, upgrade
from hubdeploy.ops.orchestrator import Orchestrator

if TYPE_CHECKING:
    from hubdeploy.ops.prepared import Prepared


class ComposeOrchestrator(Orchestrator):
    name = "compose"

    def pinned_images(self, site, plans) -> dict[str, str]:
        return {}

    def control_node(self, state: Path) -> str:
        return ""

    def place(self, prep: Prepared, client, *, console=None) -> None:
        pass

    def publish(self, prep: Prepared, client, *, console=None) -> tuple[list[str], list[Any]]:
        return [], []

    def remember(self, prep: Prepared) -> None:
        pass

    def leave_other(self, prep: Prepared, client) -> None:
        if stackdeploy.stack_services(client, prep.project):
            swarm.remove_leftovers(client, prep.site.name)
            stackdeploy.remove(client, prep.project, volumes=False)
            stackdeploy.forget_deployed(prep.state)

    def deploy(self, prep: Prepared, client, *, wait_timeout: int) -> None:
        proc = engine.compose(
            prep.project,
            prep.compose_file,
            ["up", "--detach", "--wait", "--wait-timeout", str(wait_timeout), "--remove-orphans"],
            capture=True,
            check=False,
        )
        if proc.returncode != 0:
            said = [line for line in (proc.stderr or "").splitlines() if line.strip()][-5:]
            raise OperationError(
                "the stack did not become healthy:\n"
                + "".join(f"  compose: {line}\n" for line in said)
                + self._unhealthy_report(prep),
                hint=f"hubdeploy --site {prep.site_file} logs",
            )

    def services(self, prep: Prepared, client=None) -> list[dict[str, Any]]:
        if not prep.compose_file.exists():
            return []
        proc = engine.compose(prep.project, prep.compose_file, ["ps", "--all", "--format", "json"], capture=True)
        out = []
        for line in proc.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            rows = json.loads(line)
            for row in rows if isinstance(rows, list) else [rows]:
                out.append(
                    {
                        "service": row.get("Service"),
                        "state": row.get("State"),
                        "health": row.get("Health") or None,
                        "container": row.get("Name"),
                    }
                )
        return sorted(out, key=lambda r: r["service"] or "")

    def _unhealthy_report(self, prep: Prepared) -> str:
        lines = []
        try:
            for s in self.services(prep):
                lines.append(f"  {s['service']}: {s['state']} {s['health'] or ''}".rstrip())
                if s["state"] != "running" or s["health"] not in (None, "", "healthy"):
                    proc = engine.compose(
                        prep.project, prep.compose_file, ["logs", "--no-color", "--tail", "15", s["service"]],
                        capture=True, check=False,
                    )
                    lines += [f"    | {line}" for line in proc.stdout.splitlines()[-15:]]
        except OperationError as exc:
            lines.append(f"  (could not read the stack's state: {exc.message})")
        return "\n".join(lines)

    def logs(self, prep: Prepared, services: list[str] | None, follow: bool, tail: str) -> int:
        if not prep.compose_file.exists():
            raise OperationError("the stack has not been rendered yet", hint="hubdeploy up")
        args = ["logs", "--tail", tail] + (["--follow"] if follow else []) + (services or [])
        try:
            return engine.compose(prep.project, prep.compose_file, args, check=False).returncode
        except KeyboardInterrupt:
            return 0

    def remove(self, prep: Prepared, client, *, volumes: bool) -> tuple[list[str], list[str]]:
        engine.compose_down(prep.project, prep.compose_file, volumes=volumes)
        return [], []

    def hub_control(self, prep: Prepared, client, old):
        return upgrade.container_control(old)

    def upgrade_db(self, prep: Prepared, client, old, new_image: str) -> None:
        upgrade.upgrade_db(client, old, new_image)
