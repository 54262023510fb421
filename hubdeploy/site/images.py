"""The ``images`` section: the base image and the collaborations' images built on it,
with their kernels; the parent graph is checked whole (undeclared parents, cycles,
kernelspec names two images would both install).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from hubdeploy.contract.layout import STACK_IMAGES
from hubdeploy.site.fields import Closed, EnvName, Name, Package, Problem, SiteValueError, repeated_names


class Kernel(Closed):
    """A Jupyter kernel baked into an image, with its own environment.

    Python and bash kernels get a virtualenv of their own at ``/opt/kernels/<image>-<name>``
    (``packages`` are pip requirements; pin them for reproducible images); an R kernel runs
    Debian's R with ``r-cran-irkernel``, and ``packages`` are Debian packages
    (e.g. ``r-cran-jsonlite``). The kernelspec is named ``<image>-<name>`` so that kernels
    of different collaborations never shadow each other.
    """

    name: Name
    display_name: str | None = Field(None, max_length=100, description="Name shown in the launcher; default: the spec name.")
    language: Literal["python", "r", "bash"] = "python"
    packages: list[Package] = Field(
        default_factory=list, description="pip requirements (python, bash) or Debian packages (r)."
    )
    env: dict[EnvName, str] = Field(default_factory=dict, description="Environment of the kernel process.")


def _unique_kernels(v: list[Kernel]) -> list[Kernel]:
    problems = list(repeated_names([k.name for k in v], "kernel", "kernels").values())
    if problems:
        raise SiteValueError(problems)
    return v


class BaseImage(Closed):
    from_: str | None = Field(
        None,
        alias="from",
        description="Local image to build the base on; default: a Debian rootfs bootstrapped from the mirror.",
    )
    apt: list[Package] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    kernels: list[Kernel] = Field(default_factory=list, description="Kernels with their own environments.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[Kernel]) -> list[Kernel]:
        return _unique_kernels(v)

    @field_validator("from_")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        # fullmatch: re's "$" also matches before a trailing newline.
        if v is not None and not IMAGE_REF_RE.fullmatch(v):
            raise ValueError(
                "not a valid image reference: expected [registry/]name[:tag][@sha256:digest], name in lowercase"
            )
        return v


# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
IMAGE_REF_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class CollaborationImage(Closed):
    parent: Name = Field("base", description="'base' or another collaboration image.")
    description: str = ""
    apt: list[Package] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    kernels: list[Kernel] = Field(default_factory=list, description="Kernels with their own environments.")

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[Kernel]) -> list[Kernel]:
        return _unique_kernels(v)


class Images(Closed):
    base: BaseImage = Field(default_factory=BaseImage)
    collaborations: dict[Name, CollaborationImage] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _graph(self) -> "Images":
        problems = self._reserved_problems() + self._parent_problems() + self._kernelspec_problems()
        if problems:
            raise SiteValueError(problems)
        return self

    def _reserved_problems(self) -> list[Problem]:
        """Collaborations named like the base image or one of the stack's own images."""
        problems: list[Problem] = []
        if "base" in self.collaborations:
            problems.append((("collaborations", "base"), "'base' is reserved for the base image"))
        # The stack's own images share the site's image namespace.
        for reserved in sorted(set(STACK_IMAGES) & set(self.collaborations)):
            problems.append((("collaborations", reserved), f"'{reserved}' is reserved for the stack's own image"))
        return problems

    def _parent_problems(self) -> list[Problem]:
        """Parents that are not declared, and cycles of parents, each reported once."""
        problems: list[Problem] = []
        cycles: set[frozenset[str]] = set()
        for name in self.collaborations:
            if name == "base":
                continue
            problem = self._chain_problem(name, cycles)
            if problem is not None:
                problems.append(problem)
        return problems

    def _chain_problem(self, name: str, cycles: set[frozenset[str]]) -> Problem | None:
        """What is wrong on the way from collaboration ``name`` up to base, if ``name`` is
        where to report it; ``cycles`` collects the cycles already reported."""
        seen = [name]
        parent = self.collaborations[name].parent
        while parent != "base":
            if parent not in self.collaborations:
                # Reported where the bad parent is written, once.
                if seen[-1] != name:
                    return None
                return (("collaborations", name, "parent"),
                        f"image {name!r}: parent {parent!r} is not declared; declared: {', '.join(self.names())}")
            if parent in seen:
                cycle = seen[seen.index(parent) :]
                # Every member of a cycle would find it; report it once, at its first member.
                if frozenset(cycle) in cycles or name not in cycle:
                    return None
                cycles.add(frozenset(cycle))
                return (("collaborations", name, "parent"),
                        f"image {name!r}: parent cycle {' -> '.join(cycle + [parent])}")
            seen.append(parent)
            parent = self.collaborations[parent].parent
        return None

    def _kernelspec_problems(self) -> list[Problem]:
        # "a" + kernel "b-c" and "a-b" + kernel "c" would both install kernelspec "a-b-c".
        problems: list[Problem] = []
        specs: dict[str, str] = {}
        for image, img in [("base", self.base), *sorted(self.collaborations.items())]:
            for j, k in enumerate(img.kernels):
                spec = f"{image}-{k.name}"
                loc: tuple[str | int, ...] = (("base",) if image == "base" else ("collaborations", image)) + (
                    "kernels", j, "name")
                if spec in specs:
                    problems.append((loc, f"kernelspec name {spec!r} is also made by image {specs[spec]!r}"))
                else:
                    specs[spec] = image
        return problems

    def names(self) -> list[str]:
        return ["base", *sorted(self.collaborations)]
