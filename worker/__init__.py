"""The shardlease consumer runtime."""

from leaser import VERSION_NOT_INSTALLED, __version__

__all__ = ["VERSION_NOT_INSTALLED", "__version__"]
