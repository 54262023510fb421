"""``python3 -m hubdeploy.engineproxy --site NAME [--bind-path P]... [--volume V]... [--image REF]...``"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from hubdeploy.contract.layout import ENGINE_PROXY_PORT
from hubdeploy.engineproxy.policy import SitePolicy
from hubdeploy.engineproxy.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hubdeploy.engineproxy")
    parser.add_argument("--site", required=True, help="the site whose objects the hub may touch")
    parser.add_argument("--listen", default=f"0.0.0.0:{ENGINE_PROXY_PORT}", metavar="HOST:PORT")
    parser.add_argument("--socket", default="/var/run/docker.sock", help="the engine's unix socket")
    parser.add_argument("--bind-path", action="append", default=[], metavar="PATH",
                        help="a host path the site declared (bind mounts of it and below are allowed)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME",
                        help="a volume the site declared (profile volumes: the engine makes them without labels)")
    parser.add_argument("--image", action="append", default=[], metavar="REF",
                        help="a notebook image of the site (as its profiles name it): the only images it may run")
    parser.add_argument("--log-allowed", action="store_true", help="log allowed requests too")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    logging.basicConfig(level=logging.DEBUG if args.log_allowed else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    policy = SitePolicy(args.site, tuple(args.bind_path), tuple(args.volume), frozenset(args.image))
    try:
        asyncio.run(serve(policy, args.socket, host or "0.0.0.0", int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
