"""Which site directory owns a stack.

Two checkouts of one site (or two sites that share a ``name``) render the same compose
project: an ``up`` from the second would silently recreate the first's containers with
its own secrets, and a ``down`` from it would stop them. So each state directory keeps a
random site id (``.hubdeploy/site-id``), the stack's hub carries it as a label
(:data:`~hubdeploy.contract.layout.LABEL_OWNER`, with the directory beside it), and
``up``/``down`` compare the two before doing anything else. ``--take-over`` is the
operator saying the other directory is gone or wrong.

The id is created in memory by :func:`load` (no side effect while a command is still
checking its input) and written by :func:`save` with the rest of the state.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from hubdeploy.contract.layout import LABEL_OWNER, LABEL_OWNER_DIR
from hubdeploy.errors import OperationError

SITE_ID_FILE = "site-id"


@dataclass(frozen=True)
class Owner:
    """A state directory's claim: its site id and the site directory it sits in."""

    id: str
    directory: str
    new: bool = False  # not yet written to the state directory

    def labels(self) -> dict[str, str]:
        return {LABEL_OWNER: self.id, LABEL_OWNER_DIR: self.directory}


def load(state: Path) -> Owner:
    """The state directory's owner, or a new one (not written) when it has none yet."""
    directory = str(state.resolve().parent)
    try:
        data = json.loads((state / SITE_ID_FILE).read_text(encoding="utf-8"))
        return Owner(str(data["id"]), directory)
    except FileNotFoundError:
        return Owner(uuid.uuid4().hex, directory, new=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperationError(f"cannot read the site id {state / SITE_ID_FILE}: {exc}",
                             hint="delete it to give this directory a new id (then up --take-over)") from None


def save(state: Path, owner: Owner) -> None:
    """Write the site id (atomically; an existing id is kept: the first writer wins)."""
    path = state / SITE_ID_FILE
    if path.exists():
        return
    state.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SITE_ID_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"id": owner.id, "directory": owner.directory}) + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)  # fails if another process saved one meanwhile: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def refusal(mine: Owner, found: list[dict[str, str]], project: str) -> str | None:
    """Why ``mine`` must not act on a stack whose containers carry ``found`` labels;
    None when it may (pure: unit-tested).

    Containers without an owner label (made before ownership existed) claim nothing.
    """
    others = sorted({(labels[LABEL_OWNER], labels.get(LABEL_OWNER_DIR, "?")) for labels in found
                     if labels.get(LABEL_OWNER) and labels[LABEL_OWNER] != mine.id})
    if not others:
        return None
    dirs = ", ".join(d for _, d in others)
    return (f"the stack {project} belongs to the site directory {dirs}, not {mine.directory} "
            "(two site files with the same name)")
