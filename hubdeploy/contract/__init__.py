"""The contract between the CLI side and the hub side, written once.

``hubdeploy render`` (the CLI side) writes files and compose services that code inside the
hub's container (the hub side: ``hubdeploy.hub.configure``, the spawner, the backends,
``hubdeploy.hub.orphans``) reads. Every name, path, port, label and shape they must agree
on is defined here and imported by both, never spelt out again:

- :mod:`~hubdeploy.contract.layout`: ports, container paths, secret names, hubdeploy's
  labels on containers, the stack's services, networks and volumes and their names;
- :mod:`~hubdeploy.contract.labels`: the labels Compose and Swarm set, which the stack's
  objects are found by, and the labels on hubdeploy's images;
- :mod:`~hubdeploy.contract.services`: the built-in hub services and their scopes;
- :mod:`~hubdeploy.contract.hubjson`: the shape of ``hub.json`` (frozen dataclasses) and its
  strict loader (:mod:`~hubdeploy.contract.strict`, which also reads the backends' configs);
- :mod:`~hubdeploy.contract.names`: Docker and Slurm names of users' servers;
- :mod:`~hubdeploy.contract.backends`: the notebook backends' names, and the spawner's
  saved state that ``hubdeploy orphans`` reads back;
- :mod:`~hubdeploy.contract.orphans`: the command the CLI side runs in the hub's
  container to list, remove and stop servers, and the JSON it reads back;
- :mod:`~hubdeploy.contract.values`: memory sizes, Slurm names and times, and the
  check of a server's resources against a profile's limits.

Standard library only: the hub image installs this package without hubdeploy's CLI
dependencies (pydantic, click, docker-compose), and nothing here may import from
``hubdeploy.hub``, ``hubdeploy.backends`` or any CLI-side module.
"""
