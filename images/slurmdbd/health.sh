#!/bin/sh
# Healthy while MariaDB answers on its socket and slurmdbd runs (the entrypoint ends the
# container when either stops). A connection to slurmdbd's port without a message would
# only fill its log with errors.
set -eu
mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null
kill -0 "$(cat /run/hubdeploy-slurmdbd.pid)"
