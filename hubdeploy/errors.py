"""Exceptions that the CLI turns into exit codes, never into tracebacks.

``SiteError`` (exit 2) is bad input: it is raised before any side effect.
``OperationError`` (exit 1) is a failed operation on a daemon, a build or the stack.
Messages must never contain a secret: they are printed, logged and put in --json.
"""

from __future__ import annotations


class HubdeployError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SiteError(HubdeployError):
    """Bad input: a site file, a name, an argument. Exit code 2."""

    exit_code = 2


class OperationError(HubdeployError):
    """A daemon, build or stack operation failed. Exit code 1."""

    exit_code = 1
