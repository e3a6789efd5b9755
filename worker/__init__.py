"""shardlease's Python API: the names in :data:`__all__` are public; everything else is private.

Public, and kept compatible across minor versions:

* running a consumer in your own process: :func:`build_config` (settings named as in the README's
  configuration tables, checked by the command's parsers), :class:`RunConfig` (the frozen, validated
  settings) and :class:`EmbeddedWorker` (start/stop/wait, their async forms, a foreground ``run()``);
  see docs/embedding.md;
* what a handler receives: :class:`Record` and :class:`ShardContext`;
* the errors, one tree under :class:`ShardleaseError` (leaser/errors.py and worker/errors.py):
  :class:`ConfigError` (a bad setting; one line naming it and the fix), :class:`RetryableError` and
  :class:`CoordinationUnavailable` (Redis or AWS unavailable, after the start-up retries),
  :class:`FatalError`, :class:`StreamsError` and its subclasses such as :class:`StreamNotFound`, and
  :class:`WorkerStopError` (:class:`AbandonedHandlerCalls`, :class:`WorkerFailed`): how an embedded
  worker stopped when it did not stop cleanly;
* ``__version__``.

The submodules (``worker.runtime``, ``worker.config``, ``worker.handling``, ...) are private: they
change without notice.  ``import worker`` stays cheap: the API's modules (boto3 among their imports)
load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from leaser import VERSION_NOT_INSTALLED, __version__
from leaser.errors import (
    ConfigError,
    CoordinationUnavailable,
    FatalError,
    LeaseLostError,
    RetryableError,
    ShardleaseError,
)
from worker.errors import (
    AbandonedHandlerCalls,
    AccessDenied,
    StreamDisabled,
    StreamNotFound,
    StreamsError,
    WorkerFailed,
    WorkerStopError,
)

if TYPE_CHECKING:
    from worker.config import RunConfig
    from worker.embedding import EmbeddedWorker, build_config
    from worker.handling.handler import ShardContext
    from worker.reading.records import Record

__all__ = [
    "VERSION_NOT_INSTALLED",
    "AbandonedHandlerCalls",
    "AccessDenied",
    "ConfigError",
    "CoordinationUnavailable",
    "EmbeddedWorker",
    "FatalError",
    "LeaseLostError",
    "Record",
    "RetryableError",
    "RunConfig",
    "ShardContext",
    "ShardleaseError",
    "StreamDisabled",
    "StreamNotFound",
    "StreamsError",
    "WorkerFailed",
    "WorkerStopError",
    "__version__",
    "build_config",
]

_LAZY = {
    "EmbeddedWorker": "worker.embedding",
    "build_config": "worker.embedding",
    "RunConfig": "worker.config",
    "Record": "worker.reading.records",
    "ShardContext": "worker.handling.handler",
}
"""Public names loaded on first use, and the module each comes from."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
