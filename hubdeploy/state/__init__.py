"""The state directory beside a site file (``.hubdeploy/``), what the operator's machine keeps.

- :mod:`~hubdeploy.state.secrets`: the stack's secrets, generated once (0600) and reused;
- :mod:`~hubdeploy.state.selfsigned`: the certificate of ``tls: {self_signed: true}``;
- :mod:`~hubdeploy.state.ownership`: the site id that says which directory owns a stack.

The rendered files (:mod:`hubdeploy.render`) and the image build contexts
(:mod:`hubdeploy.images`) are written there too, by their own packages.
"""
