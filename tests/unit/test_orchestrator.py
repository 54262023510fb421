"""The seam between the stack's operations and what runs the services (compose, swarm)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubdeploy.errors import SiteError
from hubdeploy.ops import stack
from hubdeploy.ops.compose import ComposeOrchestrator
from hubdeploy.ops.orchestrator import Orchestrator
from hubdeploy.site.model import Site

OPS = Path(stack.__file__).parent


def test_every_orchestrator_the_schema_admits_has_one_implementation():
    admitted = set(typing.get_args(Site.model_fields["orchestrator"].annotation))
    assert set(stack.ORCHESTRATORS) == admitted
    for name in admitted:
        chosen = stack.orchestrator(SimpleNamespace(orchestrator=name))
        assert isinstance(chosen, Orchestrator) and chosen.name == name  # no abstract method left


def test_an_unknown_orchestrator_names_the_known_ones():
    with pytest.raises(SiteError, match="unknown orchestrator 'k8s'; known: compose, swarm"):
        stack.orchestrator(SimpleNamespace(orchestrator="k8s"))


def test_compose_pins_no_image_and_places_on_no_node(tmp_path):
    compose = ComposeOrchestrator()
    assert compose.pinned_images(SimpleNamespace(), {}) == {}
    assert compose.control_node(tmp_path) == ""


@pytest.mark.parametrize("module", ["stack.py", "prepared.py", "servers.py", "upgrade.py"])
def test_operations_leave_the_choice_to_the_orchestrator(module):
    """Outside the two implementations nothing compares the site's orchestrator."""
    tree = ast.parse((OPS / module).read_text())
    compared = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(c, ast.Constant) and c.value in ("compose", "swarm")
                        for c in [node.left, *node.comparators])]
    assert compared == [], f"{module} branches on the orchestrator at lines {compared}"
