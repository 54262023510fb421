#!/bin/sh
# Start munged, then run one Slurm daemon in the foreground (logs go to the container's).
#   hubdeploy-slurm-node slurmctld | slurmd
# Expects /etc/hubdeploy-slurm/slurm.conf and munge.key (or $HUBDEPLOY_MUNGE_KEY) (and optionally job_submit.lua),
# put there before the start.
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
runuser -u munge -- /usr/sbin/munged

case "$role" in
  slurmctld)
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
    exec /usr/sbin/slurmctld -D -v
    ;;
  slurmd)
    install -d -m 0755 /var/spool/slurmd /var/log/slurm
    exec /usr/sbin/slurmd -D -v
    ;;
  *)
    echo "usage: $0 slurmctld|slurmd" >&2
    exit 2
    ;;
esac
