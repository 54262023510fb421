#!/bin/sh
# hubdeploy database entrypoint: initialise PGDATA on first start, (re)apply the
# jupyterhub role's password from the secret file on every start, run postgres.
#
# The password is read from a file and sent to postgres on stdin, so it never appears
# in argv (ps, docker inspect), the environment or the logs.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
password_file=${DB_PASSWORD_FILE:-/run/secrets/db_password}
socket_dir=/run/postgresql

log() { echo "hubdeploy-db: $*" >&2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    else
        "$@"
    fi
}

if [ ! -r "$password_file" ]; then
    log "cannot read the password file $password_file (is the db_password secret mounted?)"
    exit 1
fi
password=$(cat "$password_file")
if [ -z "$password" ]; then
    log "the password file $password_file is empty"
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    # A fresh volume, or one made by another uid: postgres refuses a data directory it
    # does not own or that others can read.
    mkdir -p "$PGDATA" "$socket_dir"
    chown postgres:postgres "$PGDATA" "$socket_dir"
    chmod 0700 "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    log "initialising $PGDATA"
    # Local (socket) connections: only the postgres OS user as itself. Network: passwords.
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --no-locale \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    {
        echo ""
        echo "# hubdeploy: the hub reaches the database over the stack's internal network."
        echo "host all all 0.0.0.0/0 scram-sha-256"
        echo "host all all ::/0 scram-sha-256"
    } >>"$PGDATA/pg_hba.conf"
fi

# A server that listens on the socket only, so that nothing connects before the role
# has its current password (the secret may have been regenerated since the last start).
as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent \
    -o "-c listen_addresses='' -c unix_socket_directories=$socket_dir" start >/dev/null

# SQL string literal: standard_conforming_strings is on, so only ' needs doubling.
quoted=$(printf '%s' "$password" | sed "s/'/''/g")
# printf is a shell builtin: the SQL goes through a pipe, never through argv.
# log_min_error_statement=panic: a failing statement must not be logged with its text.
printf '%s\n' \
    "SET log_min_error_statement = panic;" \
    "SET log_statement = 'none';" \
    "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jupyterhub') THEN CREATE ROLE jupyterhub LOGIN; END IF; END \$\$;" \
    "ALTER ROLE jupyterhub WITH LOGIN PASSWORD '$quoted';" \
    "SELECT 'CREATE DATABASE jupyterhub OWNER jupyterhub' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'jupyterhub')\\gexec" \
    | as_postgres psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host="$socket_dir" --username=postgres \
        --dbname=postgres >/dev/null
unset password quoted

as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop >/dev/null
log "role and database jupyterhub ready; starting postgres"

if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
