"""irpo_data: build Iterative RPO preference pairs (sample -> grade -> pair -> publish)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("irpo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
