"""Read a site file into a validated :class:`hubdeploy.site.model.Site`.

Everything that can be wrong with the file becomes one :class:`SiteError` listing every
problem, one per line, as ``FILE:LINE:COL: KEY.PATH: what was expected (got: ...)``
(lines and columns count from 1, like compilers do, so editors can jump to them).

ruamel's round-trip loader is used only for what it remembers: where each key and item
was written. The data handed to pydantic is plain Python, validated in strict mode, so
``port: "8000"`` or ``enabled: yes`` (a string under YAML 1.2) is an error rather than a
guess.
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from hubdeploy.errors import SiteError
from hubdeploy.site import messages as msgs
from hubdeploy.site.model import Site

# Paths in the site that name files, relative to the site file's directory.
FILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("tls", "cert"),
    ("tls", "key"),
    ("build", "ca_bundle"),
    ("slurm", "submit", "ssh", "known_hosts"),
    ("slurm", "submit", "ssh", "identity_file"),
    ("identity", "file", "passwd"),
    ("identity", "file", "group"),
    ("identity", "ldap", "ca_file"),
    ("identity", "ldap", "bind_password_file"),
)
# Secrets: ssh refuses a key others may read, and a password must not be either.
PRIVATE_FILE_KEYS = {("slurm", "submit", "ssh", "identity_file"), ("identity", "ldap", "bind_password_file")}

# A site file is a page or two; the caps stop an alias bomb or a mistaken
# multi-gigabyte path from eating memory before validation can say no.
MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_LINES = 50

Pos = tuple[int, int]  # 1-based line and column


def resolve_site_path(site_dir: Path, p: str | os.PathLike[str]) -> Path:
    """Where a path written in the site file points: absolute as is, else under ``site_dir``.

    No ``~`` expansion: the site is read by different users (and by CI), so a path
    must mean the same file for all of them.
    """
    return Path(site_dir) / Path(p)


def load_site(path: Path) -> Site:
    """Read, parse and validate the site file at ``path``; check the files it names.

    Raises :class:`SiteError` (with every problem found) for anything wrong, including
    an unreadable file; never another exception for bad input.
    """
    path = Path(path)
    name = str(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise SiteError(f"{name}: is a directory, not a site file", hint="pass the site.yaml inside it")
        # Reading a FIFO or device could block forever or never end.
        if not stat.S_ISREG(st.st_mode):
            raise SiteError(f"{name}: not a regular file")
        if st.st_size > MAX_BYTES:
            raise SiteError(f"{name}: {st.st_size} bytes is too large for a site file (limit {MAX_BYTES})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SiteError(f"{name}: no such file", hint="`hubdeploy init DIR` writes a commented example") from None
    except OSError as e:
        raise SiteError(f"{name}: cannot read the site file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SiteError(f"{name}:{line}:{col}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    return load_site_text(text, name, site_dir=path.parent)


def load_site_text(text: str, filename: str, *, site_dir: Path | None = None) -> Site:
    """Parse and validate site YAML ``text``; ``filename`` only labels the messages.

    With ``site_dir``, the files the site names (TLS cert and key, CA bundle) are
    resolved against it and must exist and be readable.
    """
    root = _parse(text, filename)
    if root is None:
        raise SiteError(
            f"{filename}:1:1: the site file is empty; it needs at least 'name' and 'profiles'",
            hint="`hubdeploy init DIR` writes a commented example",
        )
    if not isinstance(root, CommentedMap):
        line, col = _node_pos(root)
        raise SiteError(
            f"{filename}:{line}:{col}: (top level): expected a mapping of keys such as 'name' and "
            f"'profiles' (got: {msgs.summary(_plain_scalar(root))})"
        )
    problems: list[tuple[Pos, str, str]] = []
    data = _Converter(root, problems).convert()
    if data is None:  # too big to convert: nothing sensible to validate
        raise SiteError(_format(filename, problems))
    site: Site | None = None
    # Validate even after conversion problems: those values were left out or made
    # strings, and the rest of the file deserves its messages in the same run.
    try:
        # by_name=False: only the YAML spellings ("class", "from") are keys of the
        # file; the Python names (class_, from_) must not be a second way in.
        site = Site.model_validate(data, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        for err in e.errors():
            problems.extend(_explain(root, err))
    if site_dir is not None:
        problems.extend(_check_files(root, data, Path(site_dir)))
    if problems:
        raise SiteError(_format(filename, problems))
    assert site is not None
    return site


def _format(filename: str, problems: list[tuple[Pos, str, str]]) -> str:
    lines = [f"{filename}:{line}:{col}: {path}: {what}" for (line, col), path, what in sorted(set(problems))]
    # A real site has a handful of problems; hundreds mean the wrong file was
    # passed (and every key of, say, a secrets file would be echoed).
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"{filename}: ... and {len(lines) - MAX_LINES} more problems"]
    return "\n".join(lines)


# -- YAML ------------------------------------------------------------------------------


def _parse(text: str, filename: str) -> Any:
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
    out: list[tuple[Pos, str, str]] = []
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
    return _format(filename, out) if out else ""


def _node_pos(node: Any) -> Pos:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1


def _plain_scalar(v: Any) -> Any:
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


class _Converter:
    """ruamel tree -> plain dicts, lists and scalars; problems pydantic cannot see.

    Keys must be strings (an unquoted ``1:`` or ``null:`` key is almost always a
    mistake, and pydantic's error locations cannot represent them). Dates are
    refused: YAML turns an unquoted 2024-01-01 into a date, which no field takes
    and which the pass-through sections could not put into JSON.
    """

    def __init__(self, root: CommentedMap, problems: list[tuple[Pos, str, str]]):
        self.root = root
        self.problems = problems
        self.nodes = 0
        self.stack: set[int] = set()

    def convert(self) -> Any:
        try:
            return self._conv(self.root, (), _node_pos(self.root))
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
                kpos = _key_pos(v, k, pos)
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
        return _plain_scalar(v)


class _TooBig(Exception):
    pass


def _key_pos(m: Any, k: Any, default: Pos) -> Pos:
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


def _locate(root: CommentedMap, loc: tuple[Any, ...]) -> Pos:
    """Position of the deepest part of ``loc`` present in the file.

    A key's position is where the key is written; an item's, where the item starts.
    For a missing key the walk stops at its parent, which is where it belongs.
    """
    node: Any = root
    pos = _node_pos(root)
    for seg in loc:
        if isinstance(node, CommentedMap) and isinstance(seg, str) and seg in node:
            pos = _key_pos(node, seg, pos)
        elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
            pos = _item_pos(node, seg, pos)
        else:
            break
        node = node[seg]
    return pos


# -- pydantic errors -------------------------------------------------------------------


def _explain(root: CommentedMap, err: ErrorDetails) -> list[tuple[Pos, str, str]]:
    """One pydantic error -> (position, key path, message) lines."""
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "value_error":
        cause = err.get("ctx", {}).get("error")
        sub = getattr(cause, "problems", None)
        if sub:  # schema.SiteValueError: several problems, each with its own place
            return [_line(root, loc + tuple(rel), text) for rel, text in sub]
    if len(loc) >= 2 and loc[-1] == "[key]" and err.get("input") == loc[-2]:
        # A dict key failed validation (pydantic appends "[key]" to the key's own
        # location; a key literally spelt "[key]" fails the input test): point at
        # the key, and say it is the key.
        loc = loc[:-1]
        return [_line(root, loc, f"invalid key: {msgs.describe(err, loc)}")]
    return [_line(root, loc, msgs.describe(err, loc))]


def _line(root: CommentedMap, loc: tuple[Any, ...], text: str) -> tuple[Pos, str, str]:
    return _locate(root, loc), msgs.format_path(loc), text


# -- referenced files ------------------------------------------------------------------


def _check_files(root: CommentedMap, data: Any, site_dir: Path) -> list[tuple[Pos, str, str]]:
    out: list[tuple[Pos, str, str]] = []
    for loc in FILE_KEYS:
        value: Any = data
        for seg in loc:
            value = value.get(seg) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue  # absent, or a type error pydantic already reports
        path = resolve_site_path(site_dir, value)
        problem = _unreadable(path) or (_shared(path) if loc in PRIVATE_FILE_KEYS else None)
        if problem:
            rel = "" if Path(value).is_absolute() else " (relative paths start at the site file's directory)"
            shown = str(path) if str(path).isprintable() else msgs.quote(str(path))
            out.append(_line(root, loc, f"{problem}: {shown}{rel}"))
    return out


def _shared(path: Path) -> str | None:
    mode = path.stat().st_mode & 0o777
    return f"private key is readable by others (mode {mode:o}; chmod 600)" if mode & 0o077 else None


def _unreadable(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot access ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    return None


def where(path: Path, keys: tuple[str, ...]) -> str:
    """``FILE:LINE:COL`` of a key path in a valid site file, for a problem found after
    loading (e.g. a version older than the running hub's); ``FILE`` if it is not written."""
    node: Any = _parse(path.read_text(encoding="utf-8"), str(path))
    pos: Pos | None = None
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return str(path)
        pos = _key_pos(node, k, (1, 1))
        node = node[k]
    return f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)
