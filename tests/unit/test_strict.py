"""contract.strict: JSON into frozen dataclasses, every error naming its key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from hubdeploy.contract.strict import ShapeError, json_name, plain, read


@dataclass(frozen=True)
class Inner:
    size: int
    kind: Literal["a", "b"]


@dataclass(frozen=True)
class Outer:
    name: str
    cpu: float | None
    on: bool
    tags: tuple[str, ...]
    env: dict[str, str]
    extra: dict[str, Any]
    inner: Inner
    maybe: Inner | None
    items: tuple[Inner, ...]
    class_: str = field(metadata=json_name("class"))
    optional: int = 3


GOOD = {"name": "n", "cpu": 1, "on": True, "tags": ["x"], "env": {"A": "1"}, "extra": {"k": [1, {"z": None}]},
        "inner": {"size": 2, "kind": "a"}, "maybe": None, "items": [{"size": 1, "kind": "b"}], "class": "dummy"}


def test_a_good_value_reads_into_typed_fields_and_back():
    got = read(Outer, GOOD, "f.json")
    assert got == Outer(name="n", cpu=1.0, on=True, tags=("x",), env={"A": "1"}, extra={"k": [1, {"z": None}]},
                        inner=Inner(2, "a"), maybe=None, items=(Inner(1, "b"),), class_="dummy")
    assert isinstance(got.cpu, float) and got.optional == 3
    assert plain(got) == {**GOOD, "cpu": 1.0, "optional": 3}
    assert read(Outer, plain(got), "f.json") == got


@pytest.mark.parametrize("change, message", [
    # missing keys, at any depth: a key whose field has no default must be there
    ({"name": None}, "f.json lacks name"),
    ({"inner": {"kind": "a"}}, "f.json lacks inner.size"),
    ({"items": [{"size": 1}]}, "f.json lacks items[0].kind"),
    # unknown keys: a typo is an error with the nearest known key, never a no-op
    ({"nmae": "n"}, "f.json: unknown key nmae (did you mean name?); known: class, cpu, env, extra,"),
    ({"maybe": {"size": 1, "kind": "a", "colour": 1}}, "f.json: unknown key maybe.colour; known: kind, size"),
    ({"x": 1, "y": 2}, "f.json: unknown keys x, y; known:"),
    # wrong types, each named with what was expected
    ({"cpu": "2"}, "f.json: cpu must be a number or null, not '2'"),
    ({"cpu": True}, "f.json: cpu must be a number or null, not True"),
    ({"on": 1}, "f.json: on must be true or false, not 1"),
    ({"tags": "x"}, "f.json: tags must be a list of str, not 'x'"),
    ({"tags": ["x", 2]}, "f.json: tags[1] must be a string, not 2"),
    ({"env": {"A": 1}}, "f.json: env.A must be a string, not 1"),
    ({"inner": {"size": 1.5, "kind": "a"}}, "f.json: inner.size must be an integer, not 1.5"),
    ({"inner": {"size": True, "kind": "a"}}, "f.json: inner.size must be an integer, not True"),
    ({"inner": {"size": 1, "kind": "c"}}, "f.json: inner.kind must be one of 'a', 'b', not 'c'"),
    ({"maybe": []}, "f.json: maybe must be an object, not []"),
    ({"items": {}}, "f.json: items must be a list of Inner, not {}"),
    ({"class": None}, "f.json: class must be a string, not None"),
])
def test_each_fault_is_a_clear_error_naming_the_key(change, message):
    data = {**GOOD, **change}
    if change.get("name", "") is None:
        del data["name"]
    with pytest.raises(ShapeError) as exc:
        read(Outer, data, "f.json")
    assert str(exc.value).startswith(message), str(exc.value)


def test_a_value_that_is_not_an_object_at_all():
    with pytest.raises(ShapeError, match=r"^f.json must be an object, not \[1\]$"):
        read(Outer, [1], "f.json")


def test_a_long_value_is_cut_short_in_the_message():
    with pytest.raises(ShapeError) as exc:
        read(Outer, {**GOOD, "on": "y" * 1000}, "f.json")
    assert len(str(exc.value)) < 120 and str(exc.value).endswith("...")
