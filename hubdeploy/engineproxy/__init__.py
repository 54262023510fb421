"""The engine proxy: the one stack component that holds the Docker socket.

The hub reaches the engine only through it (``DOCKER_HOST=tcp://engine-proxy:2375`` on
the stack's internal network). :mod:`.policy` decides each request (a pure function, unit
tested on its own); :mod:`.server` reads requests, asks the engine whose the objects they
name are, and forwards what the policy allows. Standard library only: it runs from the
hub image, and its privileged part is these two modules.
"""
