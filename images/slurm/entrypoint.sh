#!/bin/sh
# Start munged, then run one Slurm daemon in the foreground (logs go to the container's).
#   hubdeploy-slurm-node slurmctld | slurmd
# Expects /etc/hubdeploy-slurm/slurm.conf and munge.key (or $HUBDEPLOY_MUNGE_KEY), and
# optionally job_submit.lua and accounting.json (the controller's), put there before the
# start.
set -eu
role="${1:-slurmd}"
conf=/etc/hubdeploy-slurm

# The key may come from elsewhere (a compose secret, owner-only on the host): munged
# insists on its own copy, owner munge, mode 0400.
install -o munge -g munge -m 0400 "${HUBDEPLOY_MUNGE_KEY:-$conf/munge.key}" /etc/munge/munge.key
install -o root -g root -m 0644 "$conf/slurm.conf" /etc/slurm/slurm.conf
if [ -f "$conf/job_submit.lua" ]; then
  install -o root -g root -m 0644 "$conf/job_submit.lua" /etc/slurm/job_submit.lua
fi
install -d -o munge -g munge -m 0755 /run/munge

# munged writes an origin address into every credential and slurmctld looks it up
# (reverse DNS) on RPCs such as the job script's `scontrol update`. By default it is the
# address of this host's name, i.e. whichever network docker happened to write first into
# /etc/hosts. An address on a network the controller is not on has no name there, so the
# lookup goes to the outside resolver, which an offline site may never answer: the RPC
# outlives scontrol's wait and the job fails. A node therefore names the address it
# reaches the controller from.
origin_address() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 6817))  # UDP: no packet is sent, only the route is chosen
print(s.getsockname()[0])
PY
}
set --
if [ "$role" = slurmd ]; then
  ctld=$(sed -n 's/^SlurmctldHost=\([^(]*\).*/\1/p' /etc/slurm/slurm.conf | head -n 1)
  tries=0
  until origin=$(origin_address "$ctld" 2>/dev/null); do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "hubdeploy-slurm-node: cannot resolve the controller $ctld; munged uses its default origin" >&2
      origin=""
      break
    fi
    sleep 1
  done
  if [ -n "$origin" ]; then
    echo "hubdeploy-slurm-node: munge origin $origin (the address facing $ctld)"
    set -- "--origin=$origin"
  fi
fi
runuser -u munge -- /usr/sbin/munged "$@"

# The controller's accounting (accounting.json, rendered by hubdeploy.render.slurm): wait
# for slurmdbd, then run each sacctmgr command, as argv; one that finds everything in
# place already exits 1 with one of the "unchanged" words, which is success here. Before
# slurmctld starts, so that no job is ever submitted without the cluster's limits.
accounting() {
  python3 - "$conf/accounting.json" <<'PY'
import json, subprocess, sys, time
doc = json.load(open(sys.argv[1]))
def run(argv):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    return p.returncode, (p.stdout + p.stderr).strip()
deadline = time.monotonic() + 300
while True:
    code, out = run(doc["wait"])
    if code == 0:
        break
    if time.monotonic() > deadline:
        sys.exit(f"hubdeploy-slurm-node: slurmdbd does not answer: {out[-500:]}")
    time.sleep(2)
for argv in doc["commands"]:
    code, out = run(argv)
    if code != 0 and not any(word in out for word in doc["unchanged"]):
        sys.exit(f"hubdeploy-slurm-node: {' '.join(argv)} failed ({code}): {out[-500:]}")
    print(f"hubdeploy-slurm-node: {' '.join(argv[2:5])}: {out.splitlines()[0].strip() if out else 'done'}")
PY
}

case "$role" in
  slurmctld)
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
    if [ -f "$conf/accounting.json" ]; then
      accounting
    fi
    exec /usr/sbin/slurmctld -D -v
    ;;
  slurmd)
    install -d -m 0755 /var/spool/slurmd /var/log/slurm /run/hubdeploy
    # The node agent: notebook ports only root can bind, and no process outside a job.
    # Started again if it ever ends; its jobs' ports survive that (its state file).
    ( while :; do /usr/local/sbin/hubdeploy-node-agent serve; sleep 1; done ) &
    exec /usr/sbin/slurmd -D -v
    ;;
  *)
    echo "usage: $0 slurmctld|slurmd" >&2
    exit 2
    ;;
esac
