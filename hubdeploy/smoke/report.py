"""The smoke test's result: steps, a verdict, and its forms for people, scripts and CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

REPORT_VERSION = 1


@dataclass
class Step:
    """One step: ``ok`` is its verdict; a skipped step is ok and says why in ``detail``."""

    name: str
    ok: bool = True
    seconds: float = 0.0
    detail: str = ""
    profile: str | None = None
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.ok else "failed")


def _public_url(url: str) -> str:
    # A base URL may carry user:password@; the report shows only scheme, host and path.
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class SmokeReport:
    """Every step of one smoke run, in order. It holds no token and no password."""

    hub_url: str
    username: str
    auth: str  # "form" or "service"
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        self.hub_url = _public_url(self.hub_url)

    @property
    def ok(self) -> bool:
        """True when there was at least one step and none failed."""
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]

    def to_dict(self) -> dict:
        """The report for ``--json`` (versioned; no secrets)."""
        return {
            "version": REPORT_VERSION,
            "ok": self.ok,
            "hub_url": self.hub_url,
            "user": self.username,
            "auth": self.auth,
            "seconds": round(self.seconds, 3),
            "steps": [
                {"name": s.name, "profile": s.profile, "status": s.status, "ok": s.ok,
                 "seconds": round(s.seconds, 3), "detail": s.detail}
                for s in self.steps
            ],
        }

    def to_junit_xml(self) -> str:
        """JUnit XML: one testsuite, one testcase per step; failures carry the detail."""
        suite = ET.Element("testsuite", {
            "name": "hubdeploy.smoke",
            "tests": str(len(self.steps)),
            "failures": str(len(self.failed)),
            "errors": "0",
            "skipped": str(sum(s.skipped for s in self.steps)),
            "time": f"{self.seconds:.3f}",
        })
        props = ET.SubElement(suite, "properties")
        for name, value in (("hub_url", self.hub_url), ("user", self.username), ("auth", self.auth)):
            ET.SubElement(props, "property", {"name": name, "value": value})
        for step in self.steps:
            classname = "hubdeploy.smoke" + (f".{step.profile}" if step.profile else "")
            case = ET.SubElement(suite, "testcase", {
                "classname": classname, "name": step.name, "time": f"{step.seconds:.3f}",
            })
            if step.skipped:
                ET.SubElement(case, "skipped", {"message": step.detail})
            elif not step.ok:
                failure = ET.SubElement(case, "failure", {"message": step.detail.splitlines()[0] if step.detail else "failed"})
                failure.text = step.detail
            elif step.detail:
                ET.SubElement(case, "system-out").text = step.detail
        root = ET.Element("testsuites", {"name": "hubdeploy smoke", "tests": suite.get("tests"),
                                         "failures": suite.get("failures"), "time": suite.get("time")})
        root.append(suite)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

    def print_table(self, console) -> None:
        """A rich table of the steps and a one-line verdict."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"smoke test of {self.hub_url} as {self.username} ({self.auth})")
        for col in ("step", "profile", "status", "seconds", "detail"):
            table.add_column(col, justify="right" if col == "seconds" else "left")
        style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
        for s in self.steps:
            # Text(): a hub's message may contain [brackets] that rich would read as markup.
            table.add_row(Text(s.name), Text(s.profile or ""), Text(s.status, style=style[s.status]),
                          f"{s.seconds:.1f}", Text(s.detail))
        console.print(table)
        verdict = "[green]ok[/]" if self.ok else f"[bold red]FAILED[/] ({len(self.failed)} step(s))"
        console.print(f"smoke: {verdict} in {self.seconds:.1f} s")
