"""YAML text to what pydantic validates, keeping where everything was written.

ruamel's round-trip loader is used only for what it remembers: where each key and item
was written (:func:`locate` finds a key path's line and column again). What
:class:`Converter` hands on is plain Python: dicts, lists and builtin scalars, with
string keys only and no dates, so that validation in strict mode sees exactly what the
file says. Anything YAML itself refuses becomes a :class:`~hubdeploy.errors.SiteError`.
"""

from __future__ import annotations

import datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from hubdeploy.errors import SiteError
from hubdeploy.site import messages as msgs
from hubdeploy.site.messages import Line, Pos

# A site file is a page or two; the caps stop an alias bomb from eating memory before
# validation can say no.
MAX_NODES = 100_000
MAX_DEPTH = 64


def parse_yaml(text: str, filename: str) -> Any:
    """ruamel round-trip document, or SiteError for anything YAML itself rejects."""
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except DuplicateKeyError as e:
        # Not ruamel's message: it quotes both values, which may be secrets.
        mark = e.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise SiteError(_duplicates(text, filename) or f"{filename}:{where}: duplicate key") from None
    except MarkedYAMLError as e:
        raise SiteError(_mark_message(e, text, filename)) from None
    except ReaderError as e:
        # A control character YAML forbids in a stream; position is a character offset.
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        ch = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise SiteError(f"{filename}:{line}:{col}: control character {ch} is not allowed in YAML") from None
    except RecursionError:
        raise SiteError(f"{filename}: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - a parser bug must not become a traceback
        raise SiteError(f"{filename}: could not parse the YAML ({type(e).__name__})") from None


def _mark_message(e: MarkedYAMLError, text: str, filename: str) -> str:
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    lines = text.splitlines()
    at = lines[line - 1][col - 1 : col] if 0 < line <= len(lines) else ""
    if at == "\t" or "'\\t'" in str(e.problem):
        return (
            f"{filename}:{line}:{col}: tab character: YAML indents and separates with spaces only; "
            "replace the tab with spaces"
        )
    problem = str(e.problem or "invalid YAML").replace("\n", " ")
    context = ""
    if e.context:
        # Where the unfinished construct began is usually where the mistake is
        # (an unclosed "[" is noticed only lines later).
        cm = e.context_mark
        began = f" that began at line {cm.line + 1}, column {cm.column + 1}" if cm and cm is not mark else ""
        context = f" ({str(e.context).replace(chr(10), ' ')}{began})"
    return f"{filename}:{line}:{col}: YAML syntax error: {problem}{context}"


def _duplicates(text: str, filename: str) -> str:
    """Every duplicate key in the file, with its path and the first definition's line."""
    try:
        root = YAML(typ="rt").compose(text)
    except Exception:  # noqa: BLE001 - fall back to ruamel's single message
        return ""
    out: list[Line] = []
    seen: set[int] = set()

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if id(node) in seen:  # an alias: same node object, already checked
            return
        seen.add(id(node))
        if node.id == "mapping":
            first: dict[tuple[str, str], Any] = {}
            for k, v in node.value:
                ident = (k.tag.value if hasattr(k.tag, "value") else str(k.tag), str(k.value))
                if k.id == "scalar" and ident in first:
                    out.append(
                        (
                            (k.start_mark.line + 1, k.start_mark.column + 1),
                            msgs.format_path([*path, k.value]),
                            f"duplicate key; first defined at line {first[ident].start_mark.line + 1}",
                        )
                    )
                elif k.id == "scalar":
                    first[ident] = k
                walk(v, (*path, k.value))
        elif node.id == "sequence":
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return msgs.format_lines(filename, out) if out else ""


def node_pos(node: Any) -> Pos:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1


def plain_scalar(v: Any) -> Any:
    """ruamel's scalar subclasses (ScalarInt, ScalarFloat, ScalarBoolean, ...) as builtins."""
    if isinstance(v, (bool, ScalarBoolean)):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    return v


class Converter:
    """ruamel tree -> plain dicts, lists and scalars; problems pydantic cannot see.

    Keys must be strings (an unquoted ``1:`` or ``null:`` key is almost always a
    mistake, and pydantic's error locations cannot represent them). Dates are
    refused: YAML turns an unquoted 2024-01-01 into a date, which no field takes
    and which the pass-through sections could not put into JSON.
    """

    def __init__(self, root: CommentedMap, problems: list[Line]):
        self.root = root
        self.problems = problems
        self.nodes = 0
        self.stack: set[int] = set()

    def convert(self) -> Any:
        try:
            return self._conv(self.root, (), node_pos(self.root))
        except _TooBig as e:
            self.problems.append(((1, 1), "(top level)", str(e)))
            return None

    def _conv(self, v: Any, path: tuple[Any, ...], pos: Pos) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(f"more than {MAX_NODES} values (an alias expanding too far?)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, dict):
            if id(v) in self.stack:
                raise _TooBig("an alias refers to a mapping that contains it")
            self.stack.add(id(v))
            out: dict[Any, Any] = {}
            for k, item in v.items():
                kpos = key_pos(v, k, pos)
                if not isinstance(k, str):
                    self.problems.append(
                        (kpos, msgs.format_path(path), f"keys must be strings (got key: {msgs.summary(k)}); quote it")
                    )
                    continue
                out[str(k)] = self._conv(item, (*path, str(k)), kpos)
            self.stack.discard(id(v))
            return out
        if isinstance(v, list):
            if id(v) in self.stack:
                raise _TooBig("an alias refers to a list that contains it")
            self.stack.add(id(v))
            items = [self._conv(item, (*path, i), _item_pos(v, i, pos)) for i, item in enumerate(v)]
            self.stack.discard(id(v))
            return items
        if isinstance(v, (datetime.date, datetime.datetime)):
            self.problems.append(
                (pos, msgs.format_path(path), f"YAML read this as a date ({v}); quote it to make it a string")
            )
            return str(v)
        return plain_scalar(v)


class _TooBig(Exception):
    pass


def key_pos(m: Any, k: Any, default: Pos) -> Pos:
    # Keys brought in by a merge (<<: *x) have no position of their own in this mapping.
    data = getattr(getattr(m, "lc", None), "data", None) or {}
    if k in data:
        line, col = data[k][0], data[k][1]
        return line + 1, col + 1
    return default


def _item_pos(s: Any, i: int, default: Pos) -> Pos:
    data = getattr(getattr(s, "lc", None), "data", None) or {}
    if i in data:
        line, col = data[i][0], data[i][1]
        return line + 1, col + 1
    return default


def locate(root: CommentedMap, loc: tuple[Any, ...]) -> Pos:
    """Position of the deepest part of ``loc`` present in the file.

    A key's position is where the key is written; an item's, where the item starts.
    For a missing key the walk stops at its parent, which is where it belongs.
    """
    node: Any = root
    pos = node_pos(root)
    for seg in loc:
        if isinstance(node, CommentedMap) and isinstance(seg, str) and seg in node:
            pos = key_pos(node, seg, pos)
        elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
            pos = _item_pos(node, seg, pos)
        else:
            break
        node = node[seg]
    return pos
