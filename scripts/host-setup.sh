#!/usr/bin/env bash
# Host prerequisites that pip cannot provide, installed only when missing, then a running
# Docker engine. Idempotent: `make up` and `make test` call it on every run.
#   scripts/host-setup.sh          engine + debootstrap (what `hubdeploy up` needs)
#   scripts/host-setup.sh --test   also what the test suite drives (chromium, registry, ...)
set -euo pipefail

want=()
need() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }

need debootstrap debootstrap
if ! docker info >/dev/null 2>&1; then
  need dockerd docker.io
fi
if [ "${1:-}" = "--test" ]; then
  need chromium chromium
  # The ldap identity source's tests start a real OpenLDAP server.
  need slapd slapd
  need ldapsearch ldap-utils
fi

if [ "${#want[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "host-setup: missing ${want[*]}; install them (Debian: apt-get install ${want[*]}) or run as root" >&2
    exit 1
  fi
  echo "host-setup: installing ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

# Start an engine only when none answers: on other machines one may already run.
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "host-setup: no Docker engine answers and dockerd is not installed" >&2
    exit 1
  fi
  echo "host-setup: starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/hubdeploy-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "host-setup: dockerd did not come up; last lines of its log:" >&2
    tail -n 20 /var/log/hubdeploy-dockerd.log >&2
    exit 1
  fi
fi
