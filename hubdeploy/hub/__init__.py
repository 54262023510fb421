"""What runs inside the hub container: its configuration, spawner, proxy class, names, secret-file wrapper.

Importing this package imports nothing from JupyterHub; ``spawner`` and ``proxy`` do,
so they are imported only where JupyterHub is installed (the hub image, the tests).
"""
