"""SmokeReport, the step recorder and the kernel-output helpers: no hub needed."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET

import pytest

from hubdeploy.smoke import SMOKE_SERVICE_SCOPES, SMOKE_USER, KernelCheck, SmokeReport, Step, run_smoke
from hubdeploy.smoke.kernel import EMPTY_CHECK, KernelError, _collect, check_for, output_matches
from hubdeploy.smoke.run import StepFailed, _Recorder, server_name


def _report(*steps: Step) -> SmokeReport:
    return SmokeReport(hub_url="https://ci:hunter2@hub.example.org/", username="u", auth="form",
                       steps=list(steps), seconds=3.25)


def test_ok_needs_steps_and_no_failure():
    assert not _report().ok
    assert _report(Step("login"), Step("spawn", profile="p", skipped=True, detail="why")).ok
    assert not _report(Step("login"), Step("spawn", ok=False, detail="boom")).ok


def test_to_dict_is_versioned_and_strips_url_credentials():
    d = _report(Step("login", seconds=0.1234, detail="login form")).to_dict()
    assert d["version"] == 1 and d["ok"] is True
    assert d["hub_url"] == "https://hub.example.org/"
    assert "hunter2" not in json.dumps(d)
    assert d["steps"] == [{"name": "login", "profile": None, "status": "ok", "ok": True,
                           "seconds": 0.123, "detail": "login form"}]


def test_junit_xml_has_one_testcase_per_step():
    report = _report(
        Step("login", seconds=0.5),
        Step("spawn", profile="gpu", ok=False, seconds=2, detail="Spawn failed: no GPU\nsecond line"),
        Step("kernel ir", profile="r", skipped=True, detail="not run"),
        Step("cleanup", detail="user deleted & <gone>"),
    )
    xml = report.to_junit_xml()
    assert xml.startswith("<?xml")
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("hubdeploy.smoke", "login"), ("hubdeploy.smoke.gpu", "spawn"),
        ("hubdeploy.smoke.r", "kernel ir"), ("hubdeploy.smoke", "cleanup")]
    failure = cases[1].find("failure")
    assert failure.get("message") == "Spawn failed: no GPU"
    assert failure.text == "Spawn failed: no GPU\nsecond line"
    assert cases[2].find("skipped") is not None
    assert cases[3].find("system-out").text == "user deleted & <gone>"
    assert "hunter2" not in xml


def test_print_table_does_not_read_details_as_markup():
    from rich.console import Console

    console = Console(record=True, width=200)
    _report(Step("spawn", ok=False, detail="[bold]not markup[/bold]")).print_table(console)
    text = console.export_text()
    assert "[bold]not markup[/bold]" in text and "FAILED" in text


def test_recorder_records_failures_and_redacts_secrets():
    report = _report()
    rec = _Recorder(report, None, ["s3cret-token"])
    with rec.step("a") as st:
        st.detail = "fine"
    with rec.step("b", "p"):
        raise StepFailed("the hub said s3cret-token")
    with rec.step("c"):
        raise KeyError("x")
    assert [(s.name, s.ok) for s in report.steps] == [("a", True), ("b", False), ("c", False)]
    assert report.steps[1].detail == "the hub said ***"
    assert report.steps[2].detail == "KeyError: 'x'"


def test_checks_per_language():
    assert check_for("python") == (KernelCheck("print(5 * 4)", "20"), True)
    assert check_for("R")[0].code == "cat(5 * 4)"
    assert check_for("bash")[0].code == "echo $((5 * 4))"
    assert check_for("brainfuck") == (EMPTY_CHECK, False)
    assert check_for("Python", {"python": KernelCheck("x", "y")}) == (KernelCheck("x", "y"), True)


@pytest.mark.parametrize("output,expected,ok", [
    ("20\n", "20", True), ("Warning: x\n20", "20", True), ("200\n", "20", False),
    ("", "20", False), ("", None, True),
])
def test_output_matches_a_whole_line(output, expected, ok):
    assert output_matches(output, expected) is ok


class _FakeSocket:
    """Replays kernel messages; the first one belongs to somebody else's request."""

    def __init__(self, frames):
        self.frames = list(frames)

    def settimeout(self, t):
        pass

    def recv(self):
        return self.frames.pop(0)


def _msg(kind, content, parent="m1", channel="iopub"):
    return json.dumps({"msg_type": kind, "content": content, "channel": channel,
                       "parent_header": {"msg_id": parent}, "header": {"msg_type": kind}})


def test_collect_gathers_output_until_reply_and_idle():
    ws = _FakeSocket([
        _msg("stream", {"name": "stdout", "text": "other\n"}, parent="m0"),
        _msg("status", {"execution_state": "busy"}),
        _msg("stream", {"name": "stdout", "text": "20\n"}),
        _msg("execute_result", {"data": {"text/plain": "'x'"}}),
        b"\x00binary",
        _msg("execute_reply", {"status": "ok"}, channel="shell"),
        _msg("status", {"execution_state": "idle"}),
    ])
    assert _collect(ws, "m1", deadline=float("inf")) == ("20\n'x'\n", None)


def test_collect_reports_the_error():
    ws = _FakeSocket([
        _msg("error", {"ename": "ZeroDivisionError", "evalue": "division by zero"}),
        _msg("status", {"execution_state": "idle"}),
        _msg("execute_reply", {"status": "error"}, channel="shell"),
    ])
    assert _collect(ws, "m1", deadline=float("inf")) == ("", "ZeroDivisionError: division by zero")


def test_collect_is_bounded():
    with pytest.raises(KernelError, match="no reply in time"):
        _collect(_FakeSocket([]), "m1", deadline=0)


def test_server_names_are_prefixed_and_url_safe():
    assert server_name("python") == "smoke-python"
    assert server_name("GPU / big") == "smoke-GPU-big"


def test_service_scopes_are_filtered_to_the_smoke_user():
    assert SMOKE_SERVICE_SCOPES and all(s.endswith(f"!user={SMOKE_USER}") for s in SMOKE_SERVICE_SCOPES)
    # the hub refuses "Cannot delete yourself!" when the user has the service's name
    assert SMOKE_USER != "hubdeploy-smoke"


def test_run_smoke_against_nothing_records_and_does_not_raise():
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = run_smoke(f"http://127.0.0.1:{port}/", profiles=["p"], password="pw-secret", timeout=5)
    assert [(s.name, s.status) for s in report.steps] == [("login", "failed"), ("spawn", "skipped"),
                                                          ("cleanup", "ok")]
    assert "ConnectionError" in report.steps[0].detail
    assert "pw-secret" not in json.dumps(report.to_dict())
