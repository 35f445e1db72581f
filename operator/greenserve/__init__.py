"""greenserve: a Kubernetes operator for green GPU model serving."""

__version__ = "0.1.0"
