#!/bin/sh
# Mounted into the proxy service by hubdeploy. Starts configurable-http-proxy without its
# token in argv, compose.yaml or `docker inspect`, with its REST API bound to the internal
# network only, and without root. Nothing in this file comes from the site description.
set -eu
CONFIGPROXY_AUTH_TOKEN="$(cat /run/secrets/proxy_token)"
export CONFIGPROXY_AUTH_TOKEN
# Our own address on the internal network: only the proxy carries the alias proxy-api,
# so notebooks on the users network cannot reach the API port at all.
api_ip="$(getent hosts proxy-api | awk 'NR == 1 { print $1 }')"
# On a swarm a task's names are published only once it is healthy, which this proxy
# cannot be before it listens: there, take our own address on the network that
# engine-proxy is on (it is on the internal network only), for up to 60 s.
tries=0
while [ -z "$api_ip" ] && [ "$tries" -lt 120 ]; do
  api_ip="$(node -e '
const dns = require("dns"), os = require("os");
const n = (ip) => ip.split(".").reduce((v, o) => v * 256 + Number(o), 0);
const within = (ip, cidr) => {
  const [base, bits] = cidr.split("/");
  const size = 2 ** (32 - Number(bits));
  return Math.floor(n(ip) / size) === Math.floor(n(base) / size);
};
dns.lookup("engine-proxy", {family: 4}, (err, peer) => {
  if (err) process.exit(1);
  for (const list of Object.values(os.networkInterfaces()))
    for (const a of list)
      if (a.family === "IPv4" && !a.internal && within(peer, a.cidr)) { console.log(a.address); process.exit(0); }
  process.exit(1);
});' 2>/dev/null || true)"
  [ -n "$api_ip" ] || sleep 0.5
  tries=$((tries + 1))
done
if [ -z "$api_ip" ]; then
  echo "hubdeploy: cannot resolve proxy-api on the internal network" >&2
  exit 1
fi
if [ -f /etc/hubdeploy/tls/key.pem ]; then
  # The key on the host may be root-only; hand the unprivileged proxy its own copy.
  # Mode first, then the owner: after a chown to nobody, root could chmod it only with
  # CAP_FOWNER, which the proxy does not hold.
  install -m 0400 /etc/hubdeploy/tls/key.pem /tmp/tls-key.pem
  chown nobody /tmp/tls-key.pem
  set -- "$@" --ssl-key /tmp/tls-key.pem --ssl-cert /etc/hubdeploy/tls/cert.pem
fi
exec setpriv --reuid=nobody --regid=nogroup --init-groups \
  configurable-http-proxy --ip 0.0.0.0 --port 8000 \
  --api-ip "$api_ip" --api-port 8001 \
  --default-target http://hub:8081 --error-target http://hub:8081/hub/error \
  "$@"
