#!/bin/sh
# Fetch Docker's default seccomp profile again, as the stack's compute nodes build on it
# (hubdeploy/render/seccomp.py), from Debian's package of the engine's source, and check
# it is the file hubdeploy ships: compose/seccomp/docker-20.10.24-default.json.
#   scripts/seccomp-default.sh [OUT]   (default: a temporary file, compared, then removed)
# A new engine version means a new base file (Docker 23 changed clone3 and unshare
# handling): add it beside the old one with its hash, and name it in seccomp.BASE_FILE.
set -eu
PACKAGE=golang-github-docker-docker-dev
VERSION=20.10.24+dfsg1-1+deb12u1
SHA256=e5e91f884647e7332b3f89280777752f563df4f1372a186f14ddb7bf2f55cf61
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$PACKAGE=$VERSION" >/dev/null)
dpkg-deb -x "$work/${PACKAGE}_"*.deb "$work/deb"
src="$work/deb/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"
echo "$SHA256  $src" | sha256sum -c --quiet
cmp "$src" "$here/compose/seccomp/docker-20.10.24-default.json"
if [ $# -gt 0 ]; then cp "$src" "$1"; fi
echo "Docker 20.10.24's default seccomp profile: the shipped copy is the same file"
