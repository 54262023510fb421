#!/bin/sh
# Start munged and MariaDB (unix socket only, data in /var/lib/mysql: a volume), make
# slurmdbd's database user, then run slurmdbd; the container ends when either daemon
# does, and its restart policy starts both again.
#
# No password anywhere: MariaDB authenticates the OS user slurm, as which slurmdbd runs,
# by the socket's peer credentials (unix_socket), and root likewise.
# Expects /etc/hubdeploy-slurm/slurmdbd.conf and $HUBDEPLOY_MUNGE_KEY.
set -eu
conf=/etc/hubdeploy-slurm
data=/var/lib/mysql
socket=/run/mysqld/mysqld.sock

log() { echo "hubdeploy-slurmdbd: $*" >&2; }

install -o munge -g munge -m 0400 "${HUBDEPLOY_MUNGE_KEY:-$conf/munge.key}" /etc/munge/munge.key
# slurmdbd refuses a configuration file that others can read.
install -o slurm -g slurm -m 0600 "$conf/slurmdbd.conf" /etc/slurm/slurmdbd.conf
install -d -o munge -g munge -m 0755 /run/munge
install -d -o mysql -g mysql -m 0755 /run/mysqld
runuser -u munge -- /usr/sbin/munged

# A new volume is empty (or holds the image's own database, which docker copies in).
if [ ! -d "$data/mysql" ]; then
  log "initialising the database in $data"
  chown mysql:mysql "$data"
  mariadb-install-db --user=mysql --datadir="$data" --skip-test-db \
    --auth-root-authentication-method=socket >/dev/null
fi
# innodb_lock_wait_timeout as slurmdbd asks for (it would roll a long purge back);
# its other advice, a larger buffer pool, does not fit a small cluster's container.
mariadbd --user=mysql --datadir="$data" --skip-networking --socket="$socket" \
  --innodb-lock-wait-timeout=900 &
db=$!
tries=0
until mariadb-admin --socket="$socket" ping >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 120 ] || ! kill -0 "$db" 2>/dev/null; then
    log "MariaDB did not start"
    exit 1
  fi
  sleep 1
done
mariadb --socket="$socket" <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

/usr/sbin/slurmdbd -D -v &
dbd=$!
echo "$dbd" > /run/hubdeploy-slurmdbd.pid
# slurmdbd first: it would only retry the database that went away under it.
stop() {
  kill -TERM "$dbd" 2>/dev/null || true
  wait "$dbd" || true
  kill -TERM "$db" 2>/dev/null || true
  wait "$db" || true
}
trap 'stop; exit 0' TERM INT
while kill -0 "$db" 2>/dev/null && kill -0 "$dbd" 2>/dev/null; do
  sleep 2
done
log "a daemon ended (MariaDB $(kill -0 "$db" 2>/dev/null && echo runs || echo stopped), slurmdbd $(kill -0 "$dbd" 2>/dev/null && echo runs || echo stopped)); stopping"
stop
exit 1
