"""The contract between the CLI side and the hub side, written once.

``hubdeploy render`` (the CLI side) writes files and compose services that code inside the
hub's container (the hub side: ``hubdeploy.hub.configure``, the spawner, the backends,
``hubdeploy.hub.orphans``) reads. Every name, path, port, label and shape they must agree
on is defined here and imported by both, never spelt out again:

- :mod:`~hubdeploy.contract.layout`: ports, container paths, secret names, label keys;
- :mod:`~hubdeploy.contract.services`: the built-in hub services and their scopes;
- :mod:`~hubdeploy.contract.hubjson`: the shape of ``hub.json`` (frozen dataclasses) and its
  strict loader (:mod:`~hubdeploy.contract.strict`, which also reads the backends' configs);
- :mod:`~hubdeploy.contract.names`: Docker and Slurm names of users' servers;
- :mod:`~hubdeploy.contract.limits`: memory sizes, Slurm names and times, and the
  check of a server's resources against a profile's limits.

Standard library only: the hub image installs this package without hubdeploy's CLI
dependencies (pydantic, click, docker-compose), and nothing here may import from
``hubdeploy.hub``, ``hubdeploy.backends`` or any CLI-side module.
"""
