"""The site file: its model, one module per section, and the loader that reads it.

:mod:`~hubdeploy.site.model` assembles :class:`~hubdeploy.site.model.Site` from one
module per top-level key (``proxy`` for public, tls and proxy; ``hub``, ``database``,
``services``, ``limits``, ``build``, ``images``, ``profiles``, ``slurm``, ``identity``,
``swarm``) and checks what spans them; :mod:`~hubdeploy.site.fields` holds what the
sections share. :mod:`~hubdeploy.site.loader` turns YAML into a validated ``Site``
(:mod:`~hubdeploy.site.parse` keeps where each key was written,
:mod:`~hubdeploy.site.files` checks the files it names) and every problem into a line
with file, line, column and key path, worded by :mod:`~hubdeploy.site.messages`.
Nothing here touches a daemon, and the hub side never imports it: what the hub needs
of the site reaches it through hub.json (:mod:`hubdeploy.contract.hubjson`).
"""
