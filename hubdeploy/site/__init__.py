"""The site file: its model, one module per section, and the loader that reads it.

:mod:`~hubdeploy.site.loader` turns YAML into a validated
:class:`~hubdeploy.site.model.Site` and every problem into a line with file, line,
column and key path; :mod:`~hubdeploy.site.messages` words those lines.
Nothing here touches a daemon, and the hub side never imports it: what the hub needs
of the site reaches it through hub.json (:mod:`hubdeploy.contract.hubjson`).
"""
