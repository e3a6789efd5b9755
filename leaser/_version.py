"""The one version of shardlease: the installed distribution's, so pyproject.toml's ``version`` is its only source.

``shardlease --version``, ``status --json``, the ``shardlease_worker_info`` metric and the worker's start-up
log line all show :data:`__version__` (``leaser.__version__`` and ``worker.__version__`` are this one).
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "shardlease"
VERSION_NOT_INSTALLED = "0+unknown"
"""The version when the distribution is not installed (sources run from a checkout without
``pip install``): a valid PEP 440 version, sorting below every release, that says it is unknown."""


def distribution_version(name: str = DISTRIBUTION) -> str:
    """The installed distribution's version, else :data:`VERSION_NOT_INSTALLED`."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return VERSION_NOT_INSTALLED


__version__ = distribution_version()
