# JupyterHub configuration for hubdeploy: the same file for every site. What it sets,
# section by section, is hubdeploy.hub.configure; the site's own values come from
# hub.json, which `hubdeploy render` writes (hubdeploy.contract.hubjson).

from hubdeploy.hub import configure

# traitlets provides get_config when it loads this file.
configure.apply(get_config(), configure.load())  # noqa: F821
