"""The site's profiles as users choose them: the form, the choice, its checks, its traits.

Pure functions of hub.json's profiles (:class:`hubdeploy.contract.hubjson.Profile`), for
:class:`hubdeploy.hub.spawner.HubdeploySpawner`: the form's HTML and what it posts, the
profile a user's options name with their choices checked and written in
(:func:`resolve`, the server-side check of form and REST API alike, before anything
reaches a backend), and the Spawner traits a profile sets (:func:`trait_overrides`).
Refusals are :class:`~hubdeploy.contract.values.OptionError` or
:class:`~hubdeploy.hub.web.OptionsError`, whose messages the user reads.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from traitlets import HasTraits

from hubdeploy.contract.hubjson import Profile
from hubdeploy.contract.values import OptionError, check_limits, memory_bytes, parse_time
from hubdeploy.hub.web import check_option_value, check_user_options

# What a user may choose for a compute profile, within the site's lists and limits.
SLURM_CHOICES = ("partition", "time", "cpu", "memory")
# Every option the spawner reads -> whether a whole number is accepted besides a string.
OPTION_FIELDS = {"profile": False, "partition": False, "time": True, "cpu": True, "memory": False}


def default_profile(profiles: Sequence[Profile]) -> Profile:
    """The profile marked ``default``, else the first one."""
    return next((p for p in profiles if p.default), profiles[0])


def select_profile(profiles: Sequence[Profile], name: Any) -> Profile:
    """The profile called ``name`` (the default when None or empty); OptionError naming
    the available ones otherwise (the REST API passes any name through)."""
    if name is None or name == "":
        return default_profile(profiles)
    for p in profiles:
        if p.name == name:
            return p
    raise OptionError(f"Unknown profile {name!r}. Available profiles: {', '.join(p.name for p in profiles)}")


def resolve(profiles: Sequence[Profile], user_options: Any) -> Profile:
    """The profile ``user_options`` names, with the user's choices written in.

    The options' types and sizes are checked first: the REST API passes any JSON.
    """
    check_user_options(user_options, OPTION_FIELDS)
    options = user_options or {}
    return apply_slurm_choices(select_profile(profiles, options.get("profile")), options)


def from_form(profiles: Sequence[Profile], form_data: Mapping[str, list[str]]) -> dict[str, str]:
    """Form data (or /spawn query arguments) -> ``{"profile": name, ...choices}``, checked
    as :func:`resolve` checks it."""
    values = form_data.get("profile") or []
    name = values[0] if values else default_profile(profiles).name
    check_option_value("profile", name)
    profile = select_profile(profiles, name)
    options = {"profile": profile.name}
    for key in SLURM_CHOICES:
        # Fields are per profile in the form; the bare key works for /spawn?time=60.
        got = form_data.get(f"{profile.name}.{key}") or form_data.get(key) or []
        if got and got[0].strip():
            options[key] = got[0].strip()
    resolve(profiles, options)
    return options


def apply_slurm_choices(profile: Profile, options: Mapping[str, Any]) -> Profile:
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
    name, slurm = profile.name, profile.slurm
    if slurm is None:
        raise OptionError(f"profile {name!r} runs on a login node: {', '.join(chosen)} cannot be chosen")
    fixed = {"time": slurm.limits.max_time, "cpu": slurm.limits.max_cpu, "memory": slurm.limits.max_mem}
    for key, limit in fixed.items():
        if key in chosen and not limit:
            raise OptionError(f"profile {name!r} has a fixed {'memory size' if key == 'memory' else key} "
                              f"({key} cannot be chosen)")
    if "partition" in chosen:
        allowed = slurm.partitions or ((slurm.partition,) if slurm.partition else ())
        if chosen["partition"] not in allowed:
            raise OptionError(f"partition {chosen['partition']!r} is not offered; choose one of {', '.join(allowed)}")
        slurm = replace(slurm, partition=chosen["partition"])
    if "time" in chosen:
        slurm = replace(slurm, time=str(parse_time(chosen["time"])))
    cpu = _cores(chosen["cpu"]) if "cpu" in chosen else None
    mem = memory_bytes(str(chosen["memory"])) if "memory" in chosen else None
    if mem is not None and mem <= 0:
        raise OptionError(f"memory {chosen['memory']!r} must be more than nothing")
    check_limits(name, slurm.limits, cpus=cpu, mem_bytes=mem,
                 time_minutes=int(slurm.time) if "time" in chosen and slurm.time else None)
    return replace(profile, slurm=slurm, cpu=profile.cpu if cpu is None else float(cpu),
                   mem_limit=profile.mem_limit if mem is None else mem)


def _cores(value: Any) -> int:
    try:
        cores = int(str(value).strip())
    except ValueError:
        raise OptionError(f"cores {value!r} is not a whole number") from None
    if cores < 1:
        raise OptionError(f"cores {value!r} must be at least 1")
    return cores


def trait_overrides(spawner: HasTraits, profile: Profile) -> dict[str, Any]:
    """The Spawner traits ``profile`` sets, with the values they take: its cores, memory
    and environment, then its ``spawner_config``. KeyError naming a trait the spawner
    does not have."""
    overrides: dict[str, Any] = {}
    if profile.cpu is not None:
        overrides["cpu_limit"] = profile.cpu
    if profile.mem_limit is not None:
        overrides["mem_limit"] = profile.mem_limit
    if profile.environment:
        overrides["environment"] = {**spawner.environment, **profile.environment}
    for key, value in profile.spawner_config.items():
        if not spawner.has_trait(key):
            raise KeyError(key)
        current = overrides.get(key, getattr(spawner, key))
        # Dicts merge, as in JupyterHub's group overrides, so a profile adds to the
        # site's environment instead of replacing it.
        overrides[key] = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
    return overrides


# -- the form ---------------------------------------------------------------------------


def _slurm_fields(p: Profile) -> str:
    """The choices a compute profile offers: partition from its list, time, cores and
    memory where it sets a limit. Named ``<profile>.<choice>``; checked again server-side."""
    if p.slurm is None:
        return ""
    slurm, limits = p.slurm, p.slurm.limits
    prefix = html.escape(p.name)
    fields = []
    if len(slurm.partitions) > 1:
        opts = "".join(
            f'<option value="{html.escape(x)}"{" selected" if x == slurm.partition else ""}>{html.escape(x)}</option>'
            for x in slurm.partitions
        )
        fields.append(f'<label>Partition <select class="form-select" name="{prefix}.partition">{opts}</select></label>')
    if limits.max_time:
        fields.append(
            f'<label>Time limit (minutes or HH:MM:SS, at most {html.escape(limits.max_time)}) '
            f'<input class="form-control" name="{prefix}.time" value="{html.escape(slurm.time or "")}"></label>'
        )
    if limits.max_cpu:
        fields.append(
            f'<label>Cores <input class="form-control" type="number" min="1" max="{limits.max_cpu}" '
            f'name="{prefix}.cpu" value="{int(p.cpu or 1)}"></label>'
        )
    if limits.max_mem:
        fields.append(
            f'<label>Memory (e.g. 2G, at most {limits.max_mem // 2**20}M) '
            f'<input class="form-control" name="{prefix}.memory"></label>'
        )
    return f'<div class="hubdeploy-slurm ms-4">{"".join(fields)}</div>' if fields else ""


def form_html(profiles: Sequence[Profile], chosen: str) -> str:
    """HTML radio buttons, one per profile, with each compute profile's choices;
    ``chosen`` is checked."""
    items = []
    for i, p in enumerate(profiles):
        facts = []
        if p.cpu:
            facts.append(f"{p.cpu:g} CPU")
        if p.mem_limit:
            facts.append(f"{p.mem_limit / 1024**3:.3g} GiB")
        items.append(
            '<div class="form-check">'
            f'<input class="form-check-input" type="radio" name="profile" id="hubdeploy-profile-{i}" '
            f'value="{html.escape(p.name)}"{" checked" if p.name == chosen else ""}>'
            f'<label class="form-check-label" for="hubdeploy-profile-{i}">'
            f"<strong>{html.escape(p.display_name or p.name)}</strong>"
            + (f' <span class="text-muted">({html.escape(", ".join(facts))})</span>' if facts else "")
            + (f"<br><small>{html.escape(p.description)}</small>" if p.description else "")
            + "</label>"
            + _slurm_fields(p)
            + "</div>"
        )
    return (
        '<fieldset class="hubdeploy-profiles"><legend>Choose a server profile</legend>'
        + "".join(items)
        + "</fieldset>"
    )
