"""Read a site file into a validated :class:`hubdeploy.site.model.Site`.

Everything that can be wrong with the file becomes one :class:`SiteError` listing every
problem, one per line, as ``FILE:LINE:COL: KEY.PATH: what was expected (got: ...)``
(lines and columns count from 1, like compilers do, so editors can jump to them).

:mod:`hubdeploy.site.parse` reads the YAML, remembering where each key and item was
written; the data handed to pydantic is plain Python, validated in strict mode, so
``port: "8000"`` or ``enabled: yes`` (a string under YAML 1.2) is an error rather than a
guess. :mod:`hubdeploy.site.files` checks the files the site names.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml.comments import CommentedMap

from hubdeploy.errors import SiteError
from hubdeploy.site import messages as msgs
from hubdeploy.site.files import file_problems
from hubdeploy.site.messages import Line, Pos
from hubdeploy.site.model import Site
from hubdeploy.site.parse import Converter, key_pos, locate, node_pos, parse_yaml, plain_scalar

# A site file is a page or two; the cap stops a mistaken multi-gigabyte path from
# eating memory before validation can say no.
MAX_BYTES = 1024 * 1024


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
    root = _document(text, filename)
    problems: list[Line] = []
    data = Converter(root, problems).convert()
    if data is None:  # too big to convert: nothing sensible to validate
        raise SiteError(msgs.format_lines(filename, problems))
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
        problems.extend(_line(root, loc, what) for loc, what in file_problems(data, Path(site_dir)))
    if problems:
        raise SiteError(msgs.format_lines(filename, problems))
    assert site is not None
    return site


def _document(text: str, filename: str) -> CommentedMap:
    """The YAML document of a site: a mapping, or SiteError."""
    root = parse_yaml(text, filename)
    if root is None:
        raise SiteError(
            f"{filename}:1:1: the site file is empty; it needs at least 'name' and 'profiles'",
            hint="`hubdeploy init DIR` writes a commented example",
        )
    if not isinstance(root, CommentedMap):
        line, col = node_pos(root)
        raise SiteError(
            f"{filename}:{line}:{col}: (top level): expected a mapping of keys such as 'name' and "
            f"'profiles' (got: {msgs.summary(plain_scalar(root))})"
        )
    return root


# -- pydantic errors -------------------------------------------------------------------


def _explain(root: CommentedMap, err: ErrorDetails) -> list[Line]:
    """One pydantic error -> (position, key path, message) lines."""
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "value_error":
        cause = err.get("ctx", {}).get("error")
        sub = getattr(cause, "problems", None)
        if sub:  # fields.SiteValueError: several problems, each with its own place
            return [_line(root, loc + tuple(rel), text) for rel, text in sub]
    if len(loc) >= 2 and loc[-1] == "[key]" and err.get("input") == loc[-2]:
        # A dict key failed validation (pydantic appends "[key]" to the key's own
        # location; a key literally spelt "[key]" fails the input test): point at
        # the key, and say it is the key.
        loc = loc[:-1]
        return [_line(root, loc, f"invalid key: {msgs.describe(err, loc)}")]
    return [_line(root, loc, msgs.describe(err, loc))]


def _line(root: CommentedMap, loc: tuple[Any, ...], text: str) -> Line:
    return locate(root, loc), msgs.format_path(loc), text


def where(path: Path, keys: tuple[str, ...]) -> str:
    """``FILE:LINE:COL`` of a key path in a valid site file, for a problem found after
    loading (e.g. a version older than the running hub's); ``FILE`` if it is not written."""
    node: Any = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    pos: Pos | None = None
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return str(path)
        pos = key_pos(node, k, (1, 1))
        node = node[k]
    return f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)
