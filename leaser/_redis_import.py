"""``import redis`` without the OpenTelemetry SDK that redis-py's observability module imports eagerly.

redis-py 8 imports ``opentelemetry.sdk.metrics`` at the top of ``redis.observability.providers`` (inside
``try/except ImportError``) only to annotate a return type: its metrics use the application's global
MeterProvider, through ``opentelemetry.metrics``, and ``redis.observability.config`` imports the SDK
itself when asked to build a provider.  Where the SDK is installed that eager import costs every
process that imports redis some 50 ms of start-up.  :func:`import_redis` imports redis with that one
import refused (an ``ImportError``, which redis-py expects when the SDK is missing): only when made by
the module body of ``redis.observability.providers``, in the importing thread, and only while redis is
being imported.  The SDK itself imports normally, and redis-py's metrics work as before
(tests/test_startup.py checks both).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_SDK = "opentelemetry.sdk"
_IMPORTER = "redis.observability.providers"


def _imported_by(module: str) -> bool:
    """True if this thread is running the body of ``module`` (its top-level import statements)."""
    getframe = getattr(sys, "_getframe", None)
    frame = getframe(2) if getframe is not None else None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == module:
            return True
        frame = frame.f_back
    return False


class _RefuseEagerSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if (fullname == _SDK or fullname.startswith(_SDK + ".")) and _imported_by(_IMPORTER):
            raise ModuleNotFoundError(f"{fullname} is not imported by {_IMPORTER} at import time", name=fullname)
        return None


def import_redis() -> None:
    """Import redis (a no-op if it is imported already) without its eager OpenTelemetry SDK import."""
    if "redis" in sys.modules:
        return
    finder = _RefuseEagerSdk()
    sys.meta_path.insert(0, finder)
    try:
        import redis
        import redis.cluster  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


import_redis()
