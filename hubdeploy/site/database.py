"""The ``database`` section: where the hub keeps its state."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hubdeploy.site.fields import Closed


class Database(Closed):
    type: Literal["sqlite", "postgresql"] = Field(
        "sqlite", description="sqlite on a volume, or PostgreSQL as its own service."
    )
