"""The version of molequi (read by the package, the CLI and the model files it writes)."""

__version__ = "0.1.0"
