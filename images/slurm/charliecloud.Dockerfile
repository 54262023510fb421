# Appended to the node recipe when a compute profile runs through Charliecloud
# (hubdeploy.images.plan): Debian's ch-run, an ordinary unprivileged program; the nodes get
# only the seccomp rules it needs (hubdeploy/render/seccomp.py). Not charliecloud-builders
# (it pulls in docker.io and buildah), nor podman or uidmap (setuid newuidmap/newgidmap,
# fusermount3). Then every setuid/setgid bit goes: no helper that changes privileges is
# within a user's reach on a node, whatever a package brought.
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends charliecloud-runtime \
 && rm -rf /var/lib/apt/lists/* \
 && command -v ch-run \
 && find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \
 && ! find / -xdev -type f -perm /6000 | grep .
