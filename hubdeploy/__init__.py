"""hubdeploy: JupyterHub for science facilities and HPC centers, without Kubernetes."""

__version__ = "0.1.0"
