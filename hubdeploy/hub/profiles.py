"""The spawn form's profiles and the choices a user may make, checked against the site.

Pure functions of hub.json's profiles (:mod:`hubdeploy.contract.hubjson`): the form's
HTML, and :func:`apply_slurm_choices`, the server-side check of what a user asks for
(from the form or the REST API) before anything reaches a backend.
"""

from __future__ import annotations

import html
from typing import Any

from hubdeploy.contract.values import OptionError, check_limits, memory_bytes, parse_time

# What a user may choose for a compute profile, within the site's lists and limits.
SLURM_CHOICES = ("partition", "time", "cpu", "memory")
# Every option the spawner reads -> whether a whole number is accepted besides a string.
OPTION_FIELDS = {"profile": False, "partition": False, "time": True, "cpu": True, "memory": False}


def apply_slurm_choices(profile: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The profile with the user's choices (partition, time, cpu, memory) written in.

    A partition must be one of the profile's; a time, core count or memory may be chosen
    only where the profile sets the matching limit, and must be within it
    (:func:`~hubdeploy.contract.values.check_limits`, the check the Slurm backend makes
    too). Raises OptionError (shown to the user) otherwise; nothing unchecked reaches the
    job script. Empty values mean "the profile's default" (an untouched form field).
    """
    chosen = {k: options.get(k) for k in SLURM_CHOICES if options.get(k) not in (None, "")}
    if not chosen:
        return profile
    name = profile["name"]
    if profile.get("node") != "compute":
        raise OptionError(f"profile {name!r} runs on a login node: {', '.join(chosen)} cannot be chosen")
    slurm = dict(profile.get("slurm") or {})
    limits = slurm.get("limits") or {}
    fixed = {"time": "max_time", "cpu": "max_cpu", "memory": "max_mem"}
    for key, limit in fixed.items():
        if key in chosen and not limits.get(limit):
            raise OptionError(f"profile {name!r} has a fixed {'memory size' if key == 'memory' else key} "
                              f"({key} cannot be chosen)")
    out = dict(profile)
    if "partition" in chosen:
        allowed = slurm.get("partitions") or ([slurm["partition"]] if slurm.get("partition") else [])
        if chosen["partition"] not in allowed:
            raise OptionError(f"partition {chosen['partition']!r} is not offered; choose one of {', '.join(allowed)}")
        slurm["partition"] = chosen["partition"]
    if "time" in chosen:
        slurm["time"] = str(parse_time(chosen["time"]))
    if "cpu" in chosen:
        try:
            out["cpu"] = int(str(chosen["cpu"]).strip())
        except ValueError:
            raise OptionError(f"cores {chosen['cpu']!r} is not a whole number") from None
        if out["cpu"] < 1:
            raise OptionError(f"cores {chosen['cpu']!r} must be at least 1")
    if "memory" in chosen:
        out["mem_limit"] = memory_bytes(str(chosen["memory"]))
        if out["mem_limit"] <= 0:
            raise OptionError(f"memory {chosen['memory']!r} must be more than nothing")
    check_limits(name, limits, cpus=out.get("cpu") if "cpu" in chosen else None,
                 mem_bytes=out["mem_limit"] if "memory" in chosen else None,
                 time_minutes=int(slurm["time"]) if "time" in chosen else None)
    out["slurm"] = slurm
    return out



def _slurm_fields(p: dict[str, Any]) -> str:
    """The choices a compute profile offers: partition from its list, time, cores and
    memory where it sets a limit. Named ``<profile>.<choice>``; checked again server-side."""
    if p.get("node") != "compute":
        return ""
    slurm = p.get("slurm") or {}
    limits = slurm.get("limits") or {}
    prefix = html.escape(str(p["name"]))
    fields = []
    parts = slurm.get("partitions") or []
    if len(parts) > 1:
        opts = "".join(
            f'<option value="{html.escape(x)}"{" selected" if x == slurm.get("partition") else ""}>{html.escape(x)}</option>'
            for x in parts
        )
        fields.append(f'<label>Partition <select class="form-select" name="{prefix}.partition">{opts}</select></label>')
    if limits.get("max_time"):
        fields.append(
            f'<label>Time limit (minutes or HH:MM:SS, at most {html.escape(str(limits["max_time"]))}) '
            f'<input class="form-control" name="{prefix}.time" value="{html.escape(str(slurm.get("time") or ""))}"></label>'
        )
    if limits.get("max_cpu"):
        fields.append(
            f'<label>Cores <input class="form-control" type="number" min="1" max="{int(limits["max_cpu"])}" '
            f'name="{prefix}.cpu" value="{int(p.get("cpu") or 1)}"></label>'
        )
    if limits.get("max_mem"):
        fields.append(
            f'<label>Memory (e.g. 2G, at most {int(limits["max_mem"]) // 2**20}M) '
            f'<input class="form-control" name="{prefix}.memory"></label>'
        )
    return f'<div class="hubdeploy-slurm ms-4">{"".join(fields)}</div>' if fields else ""


def form_html(profiles: list[dict[str, Any]], chosen: str) -> str:
    """HTML radio buttons, one per profile, with each compute profile's choices;
    ``chosen`` is checked."""
    items = []
    for i, p in enumerate(profiles):
        facts = []
        if p.get("cpu"):
            facts.append(f"{p['cpu']:g} CPU")
        if p.get("mem_limit"):
            facts.append(f"{p['mem_limit'] / 1024**3:.3g} GiB")
        items.append(
            '<div class="form-check">'
            f'<input class="form-check-input" type="radio" name="profile" id="hubdeploy-profile-{i}" '
            f'value="{html.escape(str(p["name"]))}"{" checked" if p["name"] == chosen else ""}>'
            f'<label class="form-check-label" for="hubdeploy-profile-{i}">'
            f"<strong>{html.escape(str(p.get('display_name') or p['name']))}</strong>"
            + (f' <span class="text-muted">({html.escape(", ".join(facts))})</span>' if facts else "")
            + (f"<br><small>{html.escape(str(p.get('description') or ''))}</small>" if p.get("description") else "")
            + "</label>"
            + _slurm_fields(p)
            + "</div>"
        )
    return (
        '<fieldset class="hubdeploy-profiles"><legend>Choose a server profile</legend>'
        + "".join(items)
        + "</fieldset>"
    )
