"""push/save helpers that need no engine: remote names, error messages, credential hygiene."""

from __future__ import annotations

import pytest

from hubdeploy.errors import SiteError
from hubdeploy.images import publish
from hubdeploy.images.imagetest import ImageTestResult
from hubdeploy.images.plan import ImagePlan

PLAN = ImagePlan("astro", "hubdeploy/demo-astro:0123456789ab", "base", {}, {})


def test_remote_ref():
    assert publish.remote_ref(PLAN, "127.0.0.1:5000") == "127.0.0.1:5000/hubdeploy/demo-astro:0123456789ab"
    assert publish.remote_ref(PLAN, "registry.example.org") == "registry.example.org/hubdeploy/demo-astro:0123456789ab"
    for bad in ("http://reg:5000", "reg:5000/path", "", "reg:port"):
        with pytest.raises(SiteError):
            publish.remote_ref(PLAN, bad)


def test_push_errors_name_the_cause_and_never_the_password():
    err = publish._push_error(PLAN, "reg:5000", publish._clean("unauthorized: authentication required s3cret", "s3cret"))
    text = str(err)
    assert "refused the credentials" in text and "--password-stdin" in (err.hint or "")
    assert "s3cret" not in text
    err = publish._push_error(PLAN, "reg:5000", "dial tcp: connect: connection refused")
    assert "is a registry listening at reg:5000" in (err.hint or "")


class FakeAPI:
    def __init__(self, chunks):
        self.chunks, self.removed, self.pushed = chunks, [], []

    def tag(self, ref, repo, tag):
        self.tagged = (ref, repo, tag)

    def push(self, repo, tag, auth_config=None, stream=True, decode=True):
        self.pushed.append((repo, tag, auth_config))
        return iter(self.chunks)

    def remove_image(self, ref, noprune=True):
        self.removed.append(ref)


class FakeClient:
    def __init__(self, chunks):
        self.api = FakeAPI(chunks)


def test_push_passes_auth_to_the_sdk_and_untags_the_remote_name():
    client = FakeClient([{"status": "Pushed", "id": "abc"}, {"aux": {"Digest": "sha256:" + "a" * 64}}])
    pushed = publish.push(client, PLAN, "127.0.0.1:5000", username="u", password="p")
    assert pushed.digest == "sha256:" + "a" * 64
    assert client.api.pushed == [("127.0.0.1:5000/hubdeploy/demo-astro", "0123456789ab",
                                  {"username": "u", "password": "p", "serveraddress": "127.0.0.1:5000"})]
    assert client.api.removed == ["127.0.0.1:5000/hubdeploy/demo-astro:0123456789ab"]


def test_push_error_chunk_raises_and_still_untags():
    from hubdeploy.errors import OperationError

    client = FakeClient([{"error": "unauthorized: authentication required"}])
    with pytest.raises(OperationError, match="refused the credentials"):
        publish.push(client, PLAN, "127.0.0.1:5000", username="u", password="p")
    assert client.api.removed


def test_image_test_result_ok_only_with_kernels_and_no_failure():
    assert not ImageTestResult("a", "r").ok
    assert ImageTestResult("a", "r", kernels=[{"ok": True}]).ok
    assert not ImageTestResult("a", "r", kernels=[{"ok": True}, {"ok": False}]).ok
    assert not ImageTestResult("a", "r", kernels=[{"ok": True}], error="boom").ok
