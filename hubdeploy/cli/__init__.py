"""The ``hubdeploy`` command line (:mod:`hubdeploy.cli.main` assembles it)."""
