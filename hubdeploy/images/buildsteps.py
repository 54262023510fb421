"""What one image build did, step by step: which steps ran, which came from the cache.

The classic builder (the only one docker-py drives) announces every Dockerfile step as
``Step 3/14 : RUN ...`` and, when it reuses a cached layer, follows it with
``---> Using cache``. Keeping that per step answers "what did this rebuild re-run?",
which is what the layer order of the recipes in ``images/`` exists for: the integration
tests assert it, and the build benchmark reports where the time went.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_CACHED = re.compile(r"^\s*---> Using cache\s*$")


@dataclass
class BuildStep:
    image: str
    number: int
    instruction: str
    cached: bool = False
    seconds: float = 0.0

    @property
    def keyword(self) -> str:
        """The Dockerfile instruction (RUN, COPY, ...) in upper case."""
        return self.instruction.split(" ", 1)[0].upper()

    def to_json(self) -> dict:
        return asdict(self)


def parse_step(line: str) -> tuple[int, str] | None:
    """``(number, instruction)`` when the line starts a step, else None.

    The instruction's whitespace is collapsed: the builder echoes continuation lines
    joined, and callers compare instructions, not layout."""
    m = _STEP.match(line.strip())
    if not m:
        return None
    return int(m.group(1)), " ".join(m.group(3).split())


class StepLog:
    """Feed it the build's output lines; it keeps one BuildStep per Dockerfile step.

    A step's time runs from its announcement to the next one (or to ``close``): that
    includes the builder's own container create and commit, which is real build time.
    """

    def __init__(self, image: str, clock: Callable[[], float] = time.monotonic):
        self.image = image
        self.steps: list[BuildStep] = []
        self._clock = clock
        self._started = 0.0

    def feed(self, line: str) -> BuildStep | None:
        """Record one line; returns the step it started, if it started one."""
        parsed = parse_step(line)
        if parsed is not None:
            self._finish()
            self.steps.append(BuildStep(self.image, parsed[0], parsed[1]))
            self._started = self._clock()
            return self.steps[-1]
        if self.steps and _CACHED.match(line):
            self.steps[-1].cached = True
        return None

    def close(self) -> list[BuildStep]:
        self._finish()
        return self.steps

    def _finish(self) -> None:
        if self.steps and not self.steps[-1].seconds:
            self.steps[-1].seconds = round(self._clock() - self._started, 3)


def ran(steps: list[BuildStep], image: str | None = None) -> list[str]:
    """The instructions that were not served from the cache (of one image, or all).

    FROM is left out: it only names the parent, and the builder never reports it cached."""
    return [s.instruction for s in steps
            if not s.cached and s.keyword != "FROM" and (image is None or s.image == image)]
