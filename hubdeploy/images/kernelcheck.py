"""Runs INSIDE a notebook image (``images test``): start every kernel, check what it declares.

Copied into the container and run with the image's ``/opt/venv/bin/python``, so it uses
only the standard library and jupyter_client (which every notebook image has). Reads the
expected kernels (the image's ``hubdeploy.kernels`` label) from the JSON file named in
argv[1], and prints one line ``HUBDEPLOY-RESULT <json>`` with a result per kernelspec.

Every kernelspec the image lists is started, declared or not (a kernel nobody declared
still appears in the launcher and must work); a declared kernel also imports (Python),
loads (R) or finds (bash) each of its packages and checks its environment.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import time

MARK_OK = "HUBDEPLOY-CHECK-OK"
MARK_FAIL = "HUBDEPLOY-CHECK-FAIL"
START_TIMEOUT = 90
RUN_TIMEOUT = 120

PY_CHECK = r'''
import importlib, importlib.metadata as _md, json as _json, os as _os, re as _re, sys as _sys
_exp = _json.loads(%(expect)r)
_bad = []
if _exp.get("prefix") and _os.path.realpath(_sys.prefix) != _os.path.realpath(_exp["prefix"]):
    _bad.append(f"sys.prefix is {_sys.prefix}, expected {_exp['prefix']}")
for _k, _v in _exp.get("env", {}).items():
    if _os.environ.get(_k) != _v:
        _bad.append(f"env {_k}={_os.environ.get(_k)!r}, expected {_v!r}")
_norm = lambda n: _re.sub(r"[-_.]+", "-", n).lower()
_tops = {}
for _mod, _dists in _md.packages_distributions().items():
    for _d in _dists:
        _tops.setdefault(_norm(_d), []).append(_mod)
for _req in _exp.get("packages", []) + ([] if _exp.get("prefix") is None else ["ipykernel"]):
    _dist = _norm(_re.match(r"[A-Za-z0-9._-]+", _req).group(0))
    try:
        _md.distribution(_dist)
    except _md.PackageNotFoundError:
        _bad.append(f"package {_req}: not installed in {_sys.prefix}")
        continue
    for _mod in sorted(m for m in set(_tops.get(_dist, [])) if not m.startswith("_")):
        try:
            importlib.import_module(_mod)
        except Exception as _exc:
            _bad.append(f"package {_req}: import {_mod} failed: {type(_exc).__name__}: {_exc}")
for _b in _bad:
    print(%(fail)r, _b)
print(%(ok)r if not _bad else "")
'''

R_CHECK = r'''
local({
  bad <- character(0)
  env <- %(env)s
  for (k in names(env)) if (Sys.getenv(k) != env[[k]]) bad <- c(bad, sprintf("env %%s=%%s, expected %%s", k, Sys.getenv(k), env[[k]]))
  have <- rownames(installed.packages())
  for (p in %(libs)s) {
    m <- have[tolower(have) == tolower(p)]
    if (!length(m)) { bad <- c(bad, sprintf("library %%s: not installed", p)); next }
    ok <- tryCatch({ suppressPackageStartupMessages(library(m[1], character.only = TRUE)); TRUE },
                   error = function(e) { bad <<- c(bad, sprintf("library %%s: %%s", p, conditionMessage(e))); FALSE })
  }
  for (b in bad) cat("%(fail)s", b, "\n")
  if (!length(bad)) cat("%(ok)s\n")
})
'''

BASH_CHECK = r'''
_hd_bad=0
%(checks)s
[ "$_hd_bad" = 0 ] && echo %(ok)s
'''


def _r_vector(values) -> str:
    return "c(" + ", ".join(json.dumps(v) for v in values) + ")" if values else "character(0)"


def check_code(language: str, expect: dict | None) -> str:
    """The code a kernel runs. Undeclared kernels only prove that they execute code."""
    if expect is None:
        simple = {"python": f"print({MARK_OK!r} if 5 * 4 == 20 else 'wrong')",
                  "r": f'cat(if (5 * 4 == 20) "{MARK_OK}" else "wrong", "\\n")',
                  "bash": f"echo {MARK_OK}"}
        return simple.get(language.lower(), "")
    if expect["language"] == "python":
        return PY_CHECK % {"expect": json.dumps(expect), "ok": MARK_OK, "fail": MARK_FAIL}
    if expect["language"] == "r":
        env = "list(" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in expect["env"].items()) + ")"
        return R_CHECK % {"env": env, "libs": _r_vector(expect.get("libraries", ["IRkernel"])),
                          "ok": MARK_OK, "fail": MARK_FAIL}
    checks = [f'[ "${{{k}}}" = {shlex.quote(v)} ] || {{ echo {MARK_FAIL} "env {k} is \'${{{k}}}\', not as declared"; '
              "_hd_bad=1; }" for k, v in expect["env"].items()]
    prefix = expect.get("prefix")
    for req in expect.get("packages", []):
        dist = req.split(";")[0]
        for sep in "<>=!~[":
            dist = dist.split(sep)[0]
        checks.append(f"{prefix}/bin/python -c 'import importlib.metadata as m; m.distribution(\"{dist}\")' "
                      f"2>/dev/null || {{ echo {MARK_FAIL} 'package {req}: not installed in {prefix}'; _hd_bad=1; }}")
    return BASH_CHECK % {"checks": "\n".join(checks), "ok": MARK_OK}


def run_kernel(name: str, language: str, expect: dict | None) -> dict:
    from jupyter_client.manager import KernelManager

    result = {"kernel": name, "language": language, "declared": expect is not None, "ok": False,
              "problems": [], "seconds": 0.0}
    t0 = time.monotonic()
    km = KernelManager(kernel_name=name)
    kc = None
    try:
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=START_TIMEOUT)
        out: list[str] = []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                result["problems"].append(f"{content['ename']}: {content['evalue']}")

        reply = kc.execute_interactive(check_code(language, expect), output_hook=hook, timeout=RUN_TIMEOUT)
        text = "".join(out)
        fails = [line.split(MARK_FAIL, 1)[1].strip() for line in text.splitlines() if MARK_FAIL in line]
        result["problems"] += fails
        if reply["content"].get("status") != "ok" and not result["problems"]:
            result["problems"].append(f"execute reply status {reply['content'].get('status')}")
        if MARK_OK not in text and not result["problems"]:
            result["problems"].append(f"the check printed no result (output: {text.strip()[:300]!r})")
        result["ok"] = not result["problems"]
    except (RuntimeError, TimeoutError, OSError, queue.Empty) as exc:
        result["problems"].append(f"{type(exc).__name__}: {exc or 'timed out'}")
    finally:
        if kc is not None:
            kc.stop_channels()
        try:
            km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a kernel that never started has nothing to stop
            pass
        result["seconds"] = round(time.monotonic() - t0, 2)
    return result


def main() -> int:
    expected = {k["name"]: k for k in json.load(open(sys.argv[1]))}
    listed = subprocess.run(["jupyter", "kernelspec", "list", "--json"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        print("HUBDEPLOY-RESULT " + json.dumps({"error": f"jupyter kernelspec list failed: {listed.stderr[-500:]}"}))
        return 1
    specs = json.loads(listed.stdout)["kernelspecs"]
    home = os.path.realpath(os.path.expanduser("~"))
    results = []
    for name in sorted(specs):
        spec = specs[name]
        r = run_kernel(name, spec["spec"].get("language", ""), expected.get(name))
        r["resource_dir"] = spec["resource_dir"]
        if os.path.realpath(spec["resource_dir"]).startswith(home + os.sep):
            r["problems"].append(f"kernelspec lives in the home directory: {spec['resource_dir']}")
            r["ok"] = False
        results.append(r)
    for name in sorted(set(expected) - set(specs)):
        results.append({"kernel": name, "language": expected[name]["language"], "declared": True, "ok": False,
                        "problems": ["declared in the image's label but not listed by jupyter kernelspec list"],
                        "seconds": 0.0, "resource_dir": None})
    print("HUBDEPLOY-RESULT " + json.dumps({"kernels": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
