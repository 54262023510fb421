"""Wording for site-file errors: key paths, value summaries, what was expected.

Kept apart from :mod:`hubdeploy.site.loader` and :mod:`hubdeploy.site.parse` (which find
*where*) because this is the part people read: pydantic's "String should match pattern
'^[a-z]...'" becomes "expected a name: ...", and a value is never echoed in full (it may
be a password). :func:`format_lines` lists the problems as the loader reports them.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from hubdeploy.site.fields import EnvName, Memory, Name, Package, SlurmName, SlurmTime, TraitSection, Username
from hubdeploy.site.model import Site
from hubdeploy.site.swarm import Registry

MAX_SHOWN = 40
# A real site has a handful of problems; hundreds mean the wrong file was passed (and
# every key of, say, a secrets file would be echoed).
MAX_LINES = 50

Pos = tuple[int, int]  # 1-based line and column
# One problem as listed: where, the key path, what is wrong.
Line = tuple[Pos, str, str]

# Values under keys like these are described, never shown, even truncated.
SECRET_RE = re.compile(r"secret|passw|token|credential|private|api_?key", re.IGNORECASE)


def _pattern(annotated: Any) -> str:
    return next(m.pattern for m in typing.get_args(annotated)[1:] if getattr(m, "pattern", None))


# What each schema pattern means, in words; an unknown pattern is shown as is.
PATTERNS: dict[str, str] = {
    _pattern(Name): "a name: a lowercase letter, then up to 30 lowercase letters, digits or '-', not ending in '-'",
    _pattern(Memory): "a memory size: a number and K, M, G or T, e.g. 512M, 2G, 1.5G",
    _pattern(TraitSection): "an identifier: letters, digits and '_', not starting with a digit",
    _pattern(EnvName): "an identifier: letters, digits and '_', not starting with a digit, at most 128",
    _pattern(SlurmName): "a Slurm name: letters, digits and _ . + -, at most 64",
    _pattern(SlurmTime): "a Slurm time: minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]",
    _pattern(Package): "a package name or requirement such as numpy or numpy>=1.26 (no spaces, no options)",
    _pattern(Username): "a username without whitespace or '/'",
    _pattern(Registry): "a registry as HOST or HOST:PORT, e.g. registry.example.org:5000 (no scheme, no path)",
    r"^\d+\.\d+\.\d+$": "a version X.Y.Z, e.g. 5.2.1",
    r"^[A-Za-z_][A-Za-z0-9_.:-]*$": "an authenticator entry-point name (e.g. dummy, github) or import path",
    r"^[a-z]+$": "a Debian suite name such as bookworm",
    r"^https?://\S+$": "an http:// or https:// URL without spaces",
}

# scheme://user:password@host
URL_PASSWORD_RE = re.compile(r"(://[^/:@\s]*:)[^@/\s]*@")

YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def format_path(loc: Any) -> str:
    """``("profiles", 0, "memory")`` -> ``profiles[0].memory``; odd keys are quoted."""
    out = ""
    for seg in loc:
        if isinstance(seg, int) and not isinstance(seg, bool):
            out += f"[{seg}]"
        elif isinstance(seg, str) and re.fullmatch(rf"[A-Za-z0-9_-]{{1,{MAX_SHOWN}}}", seg):
            out += f".{seg}" if out else seg
        else:
            # Quoted (and cut short: a key can be a pasted secret too).
            seg = str(seg)
            shown = seg if len(seg) <= MAX_SHOWN else seg[:MAX_SHOWN] + "..."
            out += f"[{quote(shown)}]"
    return out or "(top level)"


def format_lines(filename: str, problems: list[Line]) -> str:
    """Problems as ``FILE:LINE:COL: KEY.PATH: what``, in file order, at most MAX_LINES."""
    lines = [f"{filename}:{line}:{col}: {path}: {what}" for (line, col), path, what in sorted(set(problems))]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"{filename}: ... and {len(lines) - MAX_LINES} more problems"]
    return "\n".join(lines)


def quote(text: str) -> str:
    """Double-quoted, with anything unprintable escaped: one message line stays one line
    (str.splitlines also breaks at U+0085 and U+2028) and nothing hides in it."""
    q = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in q)


def summary(value: Any, loc: Any = ()) -> str:
    """A short, safe description of a value for "(got: ...)"."""
    secret = any(isinstance(s, str) and SECRET_RE.search(s) for s in loc)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "a boolean" if secret else str(value).lower()
    if isinstance(value, (int, float)):
        return "a number" if secret else str(value)
    if isinstance(value, str):
        if secret:
            return f"a string of {len(value)} characters"
        # A URL's password goes before truncation could leave part of it.
        value = URL_PASSWORD_RE.sub(r"\1***@", value)
        shown = value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."
        return quote(shown)
    return f"a {type(value).__name__}"


def describe(err: ErrorDetails, loc: tuple[Any, ...]) -> str:
    """What was expected (and what was found) for one pydantic error."""
    kind = err["type"]
    ctx: dict[str, Any] = err.get("ctx", {})
    value = err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return unknown_key(loc)
    if kind == "value_error":
        text = str(err["msg"]).removeprefix("Value error, ")
        if isinstance(value, (dict, list)):  # a model-level check: the mapping is no news
            return text
        return f"{text} (got: {summary(value, loc)})"
    expected = _expected(kind, ctx, str(err["msg"]))
    return f"{expected} (got: {summary(value, loc)}){_hint(kind, value)}"


def _expected(kind: str, ctx: dict[str, Any], msg: str) -> str:
    simple = {
        "string_type": "expected a string",
        "int_type": "expected a whole number",
        "int_from_float": "expected a whole number",
        "float_type": "expected a number",
        "bool_type": "expected true or false",
        "list_type": "expected a list",
        "dict_type": "expected a mapping (key: value)",
        "model_type": "expected a mapping (key: value)",
        "finite_number": "expected a finite number",
    }
    if kind in simple:
        return simple[kind]
    if kind == "string_pattern_mismatch":
        return "expected " + PATTERNS.get(ctx.get("pattern", ""), f"a string matching {ctx.get('pattern')}")
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}"
    bounds = {
        "greater_than": ("gt", "a number greater than"),
        "greater_than_equal": ("ge", "at least"),
        "less_than": ("lt", "a number less than"),
        "less_than_equal": ("le", "at most"),
    }
    if kind in bounds:
        key, words = bounds[kind]
        return f"expected {words} {_number(ctx.get(key))}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"expected at {'least' if kind == 'too_short' else 'most'} {n} item{'s' if n != 1 else ''}"
    return msg.replace("Input should be", "expected", 1)


def _number(v: Any) -> Any:
    """0.0 -> 0: bounds are declared as floats for float fields, but read better whole."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _hint(kind: str, value: Any) -> str:
    """A nudge for the YAML slips that strict typing catches."""
    if kind == "string_type" and isinstance(value, (bool, int, float)):
        return "; quote it to make it a string"
    if kind in ("int_type", "float_type") and isinstance(value, str):
        return "; write the number without quotes"
    if kind == "bool_type" and isinstance(value, str):
        if value.lower() in YAML11_BOOLS:
            return "; YAML 1.2 reads yes/no/on/off as strings: write true or false"
        if value.lower() in ("true", "false"):
            return "; write it without quotes"
    if kind == "list_type" and isinstance(value, str):
        return "; a single item is still a list: write [item]"
    return ""


def unknown_key(loc: tuple[Any, ...]) -> str:
    """Message for a key the model at ``loc[:-1]`` does not have, with a did-you-mean."""
    key = str(loc[-1])
    allowed = allowed_keys(loc[:-1])
    if not allowed:
        return "unknown key"
    lower = {a.lower(): a for a in allowed}
    close = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{lower[close[0]]}'?"
    return f"unknown key; allowed here: {', '.join(allowed)}"


def allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys (YAML spelling, e.g. ``class``) of the model at ``loc``; [] if not a model."""
    model = model_at(loc)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The closed model class that validates the mapping at ``loc`` in a site."""
    tp: Any = Site
    for seg in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if seg not in fields:
                return None
            tp = fields[seg].annotation
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that validates."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
