"""Slurm job script rendering and option validation (pure functions, no Slurm)."""

from __future__ import annotations

import os
import subprocess

import pytest

from hubdeploy.backends.slurm_script import (
    RUNTIMES,
    OptionError,
    job_options,
    parse_port_comment,
    parse_time,
    render,
    runtime_argv,
)
from hubsections import profile

BASE = {
    "name": "gpu",
    "cpu": 2.5,
    "mem_limit": 3 * 2**30,
    "image_ref": "hubdeploy/demo-base:0123456789ab",
    "volumes": [
        {"source": "/data", "target": "/data", "read_only": True},
        {"source": "/scratch", "target": "/s", "read_only": False},
    ],
}
SLURM = {
    "partition": "gpu",
    "account": "astro-42",
    "qos": "normal",
    "time": "1-02:00:00",
    "gpus": 2,
    "path_prepend": ["/opt/venv/bin"],
    "limits": {
        "max_cpu": 8,
        "max_mem": 16 * 2**30,
        "max_time": "2-00:00:00",
        "max_gpus": 4,
    },
}
EXPORT = ["JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL"]


def compute(slurm=None, **fields):
    """BASE with ``fields`` and the slurm keys ``slurm`` changed."""
    return profile(**{**BASE, **fields}, slurm={**SLURM, **(slurm or {})})


STAGED = "/var/lib/hubdeploy/images/hubdeploy+demo-base+0123456789ab"


def opts(runtime="native", **slurm):
    if runtime == "charliecloud":
        slurm = {"image": STAGED, **slurm}  # where the nodes find it: a path, never a tag
    return job_options(compute({"runtime": runtime, **slurm}), export=EXPORT)


def test_native_script_golden():
    script = render(opts())
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --mem=3072M",
        "#SBATCH --time=1560",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=astro-42",
        "#SBATCH --qos=normal",
        "#SBATCH --gres=gpu:2",
    ]
    assert script.splitlines()[-1] == 'exec "$@"'
    assert "export PATH=/opt/venv/bin" in script
    assert 'Comment="hubdeploy:port=$HUBDEPLOY_PORT"' in script
    assert render(opts()) == script  # deterministic


@pytest.mark.parametrize(
    "runtime, expected",
    [
        ("native", []),
        (
            "apptainer",
            [
                "apptainer",
                "exec",
                "--cleanenv",
                "--nv",
                "--bind",
                "/data:/data:ro",
                "--bind",
                "/scratch:/s",
                "hubdeploy/demo-base:0123456789ab",
            ],
        ),
        (
            "podman-hpc",
            [
                "podman-hpc",
                "run",
                "--rm",
                "--net=host",
                "--gpu",
                "-v",
                "/data:/data:ro",
                "-v",
                "/scratch:/s",
                "-e",
                "HUBDEPLOY_PORT",
                "-e",
                "JUPYTERHUB_API_TOKEN",
                "-e",
                "JUPYTERHUB_SERVICE_URL",
                "hubdeploy/demo-base:0123456789ab",
            ],
        ),
        (
            "charliecloud",
            ["ch-run", "--set-env", "-b", "/data:/data", "-b", "/scratch:/s", STAGED, "--"],
        ),
        (
            "shifter",
            [
                "shifter",
                "--image=docker:hubdeploy/demo-base:0123456789ab",
                "--module=gpu",
                "--volume=/data:/data:ro",
                "--volume=/scratch:/s",
            ],
        ),
    ],
)
def test_runtime_wrappers(runtime, expected):
    o = opts(runtime)
    assert runtime_argv(o) == expected
    last = render(o).splitlines()[-1]
    assert last == "exec " + " ".join([*expected, '"$@"'])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_script_is_valid_bash(runtime):
    subprocess.run(["bash", "-n"], input=render(opts(runtime)).encode(), check=True)


def test_apptainer_passes_the_servers_variables_by_name_only():
    # Apptainer's documented way through --cleanenv: APPTAINERENV_NAME becomes NAME inside.
    script = render(opts("apptainer"))
    for name in ("HUBDEPLOY_PORT", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL"):
        assert f'[ -z "${{{name}+x}}" ] || export APPTAINERENV_{name}="${name}"' in script
    env = {"PATH": os.environ["PATH"], "JUPYTERHUB_API_TOKEN": "s3cret"}
    probe = "\n".join(line for line in script.splitlines() if "APPTAINERENV_" in line)
    out = subprocess.run(["bash", "-euc", probe + "\nenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert "APPTAINERENV_JUPYTERHUB_API_TOKEN=s3cret" in out
    assert "APPTAINERENV_HUBDEPLOY_PORT" not in out  # unset outside: not set inside


def test_runtime_without_gpus_has_no_gpu_flags():
    o = opts("apptainer", gpus=0)
    assert "--nv" not in runtime_argv(o)
    assert "--gres" not in render(o)


def test_no_secret_and_no_user_data_in_script():
    script = render(opts("podman-hpc"))
    assert "token" not in script.lower().replace("jupyterhub_api_token", "")
    # The command is "$@" (sbatch arguments), never pasted in.
    assert "jupyterhub-singleuser" not in script


@pytest.mark.parametrize(
    "slurm, message",
    [
        ({"partition": "gpu; rm -rf /"}, "not a valid Slurm value"),
        ({"account": "$(id)"}, "not a valid Slurm value"),
        ({"qos": "a b"}, "not a valid Slurm value"),
        ({"time": "soon"}, "not minutes"),
        ({"time": "0"}, "positive"),
        ({"gpus": -1}, "non-negative"),
        ({"path_prepend": ["relative/bin"]}, "absolute"),
        ({"time": "3-00:00:00"}, "limit is 2-00:00:00"),
        ({"gpus": 5}, "limit is 4"),
    ],
)
def test_bad_or_over_limit_options_are_refused(slurm, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        opts(**slurm)


def test_cpu_and_memory_limits():
    with pytest.raises(OptionError, match="9 cores; its limit is 8"):
        job_options(compute(cpu=9))
    with pytest.raises(OptionError, match="limit is 16384 MiB"):
        job_options(compute(mem_limit=17 * 2**30))
    with pytest.raises(OptionError, match="cpu -1.0 must be a non-negative number of cores"):
        job_options(compute(cpu=-1))


def test_container_runtime_needs_image_and_absolute_binds():
    with pytest.raises(OptionError, match="needs an image"):
        job_options(compute({"runtime": "apptainer"}, image_ref="not an image"))
    with pytest.raises(OptionError, match="absolute host paths"):
        job_options(compute({"runtime": "shifter"}, volumes=[{"source": "named-volume", "target": "/x",
                                                             "read_only": True}]))


def test_a_login_profile_makes_no_job():
    with pytest.raises(OptionError, match="no slurm section"):
        job_options(profile())


def test_bad_export_names_and_node_programs():
    with pytest.raises(OptionError, match="cannot be exported"):
        job_options(compute(), export=["BAD-NAME"])
    with pytest.raises(OptionError, match="program"):
        job_options(compute(), python="python3; id")


def test_minimal_profile():
    o = job_options(profile(name="min", slurm={}))
    assert (o.cpus, o.mem_mib, o.time_minutes, o.partition, o.runtime) == (
        1,
        None,
        None,
        None,
        "native",
    )
    assert "--mem" not in render(o) and "--time" not in render(o)


@pytest.mark.parametrize(
    "value, minutes",
    [
        (90, 90),
        ("90", 90),
        ("1:30:00", 90),
        ("2-00:00:00", 2880),
        ("2-1", 2940),
        ("0:30", 1),
        ("10:30", 11),
    ],
)
def test_parse_time(value, minutes):
    assert parse_time(value) == minutes


@pytest.mark.parametrize(
    "comment, port",
    [
        ("hubdeploy:port=45678", 45678),
        ("hubdeploy:port=512", 512),  # the stack's nodes: a port only root can bind
        ("hubdeploy:port=0", None),
        ("hubdeploy:port=99999", None),
        ("(null)", None),
        ("", None),
        ("hubdeploy:port=4567x", None),
        ("port=45678", None),
    ],
)
def test_parse_port_comment(comment, port):
    assert parse_port_comment(comment) == port


def test_port_reservation_snippet_runs_and_port_is_rebindable():
    """The node-side code reserves a port that a SO_REUSEADDR server binds at once."""
    import re
    import socket

    script = render(job_options(profile(name="x", slurm={})))
    code = re.search(r"python3 -c '(.*?)'\)", script, re.DOTALL).group(1)
    port = int(subprocess.run(["python3", "-c", code], capture_output=True, text=True, check=True).stdout)
    # Someone else's bind(0) is not handed that port meanwhile ...
    others = []
    for _ in range(50):
        s = socket.socket()
        s.bind(("", 0))
        others.append(s)
    try:
        assert port not in {s.getsockname()[1] for s in others}
        # ... while the server (SO_REUSEADDR, as tornado and http.server set) gets it.
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("", port))
        srv.listen(1)
        srv.close()
    finally:
        for s in others:
            s.close()
