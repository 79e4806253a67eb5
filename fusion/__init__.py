"""asrfuse: a model-fusion decoding engine for CTC speech recognition."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asrfuse")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
