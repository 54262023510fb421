"""The compute nodes' agent (images/slurm/node-agent.py), its pure parts: which processes
have left their job, the config it is rendered, and the job script that talks to it.
The agent itself runs in tests/integration/test_identity_stack.py, from users' kernels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from hubdeploy.backends.slurm_script import JobOptions, render
from hubdeploy.contract.layout import NODE_AGENT_SOCKET, NODE_JOBS_DIR, NODE_SERVER_PORTS
from hubdeploy.render.slurm import agent_config

AGENT = Path(__file__).parents[2] / "images" / "slurm" / "node-agent.py"
spec = importlib.util.spec_from_file_location("node_agent", AGENT)
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
CFG = json.loads(agent_config())

# pid: (ppid, uid, comm): PID 1 is docker-init; slurmd, its stepd and a job's processes;
# munged; a process exec'd from outside the container (parent 0).
TABLE = {
    1: (0, 0, "docker-init"),
    7: (1, 0, "slurmd"),
    8: (1, 102, "munged"),
    20: (1, 0, "slurmstepd"),
    21: (20, 20001, "bash"),
    22: (21, 20001, "python3"),
    23: (22, 20001, "jupyterhub-sing"),
    30: (1, 20001, "sleep"),  # setsid -f: reparented to PID 1
    31: (30, 20001, "python3"),  # and its child
    40: (0, 20002, "tail"),  # docker exec -u 20002 (the CLI's logs --user)
    50: (1, 20003, "slurmstepd"),  # a user's process that calls itself slurmstepd
    51: (50, 20003, "nc"),
    60: (1, 1000, "sleep"),  # the shared account's leftover
}


def test_processes_that_left_their_job_are_found_and_nothing_else():
    assert sorted(agent.escaped(CFG, TABLE)) == [(30, 20001), (31, 20001), (50, 20003), (51, 20003), (60, 1000)]


def test_the_config_is_the_contracts():
    assert CFG["jobs_dir"] == NODE_JOBS_DIR and CFG["socket"] == NODE_AGENT_SOCKET
    assert tuple(CFG["ports"]) == NODE_SERVER_PORTS and NODE_SERVER_PORTS[1] < 1024
    # System accounts (munge, slurm) are never swept; user accounts, jovyan included, are.
    assert not agent.user_uid(102, CFG) and not agent.user_uid(64030, CFG) and not agent.user_uid(0, CFG)
    assert agent.user_uid(1000, CFG) and agent.user_uid(20001, CFG)


def test_the_job_script_asks_the_agent_and_serves_on_the_jobs_socket():
    script = render(JobOptions(node_agent=True))
    assert NODE_AGENT_SOCKET in script and '"$SLURM_JOB_ID"' in script
    assert f'--ServerApp.sock="{NODE_JOBS_DIR}/$SLURM_JOB_ID/server.sock"' in script
    assert "PR_SET_CHILD_SUBREAPER" in script and "TIME_WAIT" not in script
    assert "TIME_WAIT" in render(JobOptions()) and NODE_AGENT_SOCKET not in render(JobOptions())


def test_a_job_id_is_digits_only():
    for bad in ("../etc", "1/../../x", "", "9" * 13):
        try:
            agent.job_dir(CFG, bad)
        except ValueError:
            continue
        raise AssertionError(bad)
    assert agent.job_dir(CFG, "42") == f"{NODE_JOBS_DIR}/42"


def test_every_node_reads_the_agent_config_where_the_contract_says():
    from ruamel.yaml import YAML

    from hubdeploy import render
    from hubdeploy.contract.layout import NODE_AGENT_CONFIG, UNPRIVILEGED_PORT_START
    from hubdeploy.site.loader import load_site_text

    site = load_site_text("name: a\nslurm: {cluster: {nodes: 2}}\nprofiles:\n"
                          "  - {name: c, image: base, node: compute, default: true}\n", "site.yaml")
    refs = {n: f"hubdeploy/a-{n}:1" for n in ("base", "hub", "proxy", "slurm", "slurmdbd", "debian")}
    files = render.render(site, Path("."), refs)
    assert json.loads(files["slurm/agent.json"]) == CFG
    services = YAML(typ="safe").load(files["compose.yaml"])["services"]
    for node in ("slurm-c1", "slurm-c2"):
        svc = services[node]
        assert f"./slurm/agent.json:{NODE_AGENT_CONFIG}:ro" in svc["volumes"], svc["volumes"]
        assert svc["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": UNPRIVILEGED_PORT_START}
        assert svc["init"] is True and "NET_BIND_SERVICE" in svc["cap_add"]
    assert "NET_BIND_SERVICE" not in services["slurmctld"]["cap_add"]
