#!/bin/sh
# Mounted into the prometheus service by hubdeploy. Hands the scrape token (a root-only
# secret file on the host) to the unprivileged prometheus user through a tmpfs, so it is
# never in argv, compose.yaml or the image, then drops root. Nothing here comes from the
# site description.
set -eu
install -m 0400 -o prometheus -g prometheus /run/secrets/service-prometheus_token /run/hubdeploy/scrape_token
exec setpriv --reuid=prometheus --regid=prometheus --init-groups \
  prometheus --config.file=/etc/hubdeploy/prometheus.yml \
  --storage.tsdb.path=/var/lib/prometheus/metrics2 \
  --web.listen-address=0.0.0.0:9090 \
  "$@"
