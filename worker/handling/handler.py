"""The user's handler: loading it by import path and calling it through one adapter.

``--handler package.module:attr`` names one of:

* a function ``handle(records, ctx)``;
* a class, instantiated once with no arguments, whose instances have the methods below;
* an instance with ``handle(records, ctx)`` (or ``__call__(records, ctx)``).

A class or instance may also define any of ``on_lease_gained(ctx)``,
``on_lease_lost(ctx)``, ``on_shard_end(ctx)`` and ``close()``; missing ones are
no-ops.  :func:`load_handler` returns a :class:`Handler` with all five methods, so
the runtime never checks what the user wrote.

Any of them may be ``async`` (any mix of sync and async): a call that returns a coroutine
is run on the process's one event loop (:mod:`worker.handling.aio`, started at the first
coroutine) while the calling thread waits, so every caller sees a plain blocking call.  An
async call past ``timeout_s`` (``--handler-timeout``) is cancelled and fails with
:class:`~worker.handling.aio.HandlerTimeout`; ``close()`` stops the loop (docs/async-handlers.md).

``records`` is a sequence of :class:`worker.reading.records.Record`; ``ctx`` is a
:class:`ShardContext`.  Its ``lease_token`` is the lease's fencing token: a sink
that stores the highest token it has seen per shard can reject writes from a
worker that lost the lease without knowing it.  Tokens follow Redis server time
in microseconds (64-bit integers near 1.7e15), so they keep growing across a Redis
failover or an empty restart as long as the Redis servers' clocks agree to within
the failover time (docs/lease-protocol.md, "Fencing tokens and Redis clocks").
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from leaser.errors import ConfigError
from worker.handling.aio import UNWIND_ON_EXIT_S, EventLoopThread

log = logging.getLogger(__name__)

_SETTING = "handler (--handler / SHARDLEASE_HANDLER)"
_PATH_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
HOOKS = ("on_lease_gained", "on_lease_lost", "on_shard_end")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardContext:
    """What a handler is told about the shard a batch came from.  Keyword-only: fields get added."""

    shard_id: str
    worker_id: str
    stream_arn: str
    group: str
    lease_token: int
    """The lease's fencing token: larger for every new owner of the shard (across Redis failovers and restarts too)."""


def _noop(ctx: ShardContext) -> None:
    return None


def _noop_close() -> None:
    return None


class Handler:
    """The user's handler behind one interface: ``handle``, the three lease hooks and ``close``.

    Each method returns once the user's code has finished: a coroutine it returns is run to its end on
    the handler's event loop (see the module docstring)."""

    __slots__ = ("_aio", "_close", "_closed", "_handle", "_hooks", "is_async", "name", "target", "timeout_s")

    def __init__(
        self,
        target: Any,
        handle: Callable[[Sequence[Any], ShardContext], Any],
        *,
        name: str = "",
        on_lease_gained: Callable[[ShardContext], Any] | None = None,
        on_lease_lost: Callable[[ShardContext], Any] | None = None,
        on_shard_end: Callable[[ShardContext], Any] | None = None,
        close: Callable[[], Any] | None = None,
    ) -> None:
        self.target = target
        self.name = name or _describe(target)
        self._handle = handle
        self._hooks: dict[str, Callable[[ShardContext], Any]] = {
            "on_lease_gained": on_lease_gained or _noop,
            "on_lease_lost": on_lease_lost or _noop,
            "on_shard_end": on_shard_end or _noop,
        }
        self._close = close or _noop_close
        self._closed = False
        self.is_async = any(_is_async(f) for f in (handle, *self._hooks.values(), self._close))
        """True when ``handle``, a hook or ``close`` is a coroutine function (known at load time)."""
        self.timeout_s: float | None = None
        """Seconds after which an async call is cancelled (``--handler-timeout``); None: never."""
        self._aio = EventLoopThread()
        """The event loop of the async calls: its thread starts at the first coroutine, never for a sync handler."""

    def use_runtime(self, *, timeout_s: float | None, on_loop_lag: Callable[[float], None] | None = None) -> None:
        """Set what the worker provides: the async calls' timeout and where the loop's lag (seconds) goes."""
        self.timeout_s = timeout_s
        self._aio.on_lag = on_loop_lag

    def handle(self, records: Sequence[Any], ctx: ShardContext, *, shard_id: str | None = None) -> Any:
        """Call the user's handler; returns what it returns (a later partial-batch response).

        ``shard_id`` names the shard in the logs of an async call when ``ctx`` is not a
        :class:`ShardContext` (a Lambda-style call's context)."""
        return self._finish(self._handle(records, ctx), getattr(ctx, "shard_id", "") if shard_id is None else shard_id)

    def on_lease_gained(self, ctx: ShardContext) -> None:
        self._finish(self._hooks["on_lease_gained"](ctx), ctx.shard_id)

    def on_lease_lost(self, ctx: ShardContext) -> None:
        self._finish(self._hooks["on_lease_lost"](ctx), ctx.shard_id)

    def on_shard_end(self, ctx: ShardContext) -> None:
        self._finish(self._hooks["on_shard_end"](ctx), ctx.shard_id)

    def close(self) -> None:
        """Call the user's ``close()`` once, then stop the event loop (if it ever started); later calls do
        nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            result = self._close()
            if inspect.iscoroutine(result):
                # Bounded: no hang watchdog watches close(); a coroutine that outlives its cancellation is left.
                self._aio.run(result, label="close()", timeout_s=self.timeout_s, wait_if_hung=False)
        finally:
            self._aio.close()

    def cancel_running(self, wait_s: float = UNWIND_ON_EXIT_S) -> int:
        """Cancel the async calls in flight and wait up to ``wait_s`` seconds for them to unwind (the process
        is about to exit).  Returns how many there were; 0 for a sync handler."""
        return self._aio.cancel_all(wait_s)

    @property
    def event_loop(self) -> EventLoopThread:
        """The event loop of the async calls (its thread may not have started)."""
        return self._aio

    def _finish(self, result: Any, label: str) -> Any:
        if inspect.iscoroutine(result):
            return self._aio.run(result, label=label, timeout_s=self.timeout_s)
        return result

    def __repr__(self) -> str:
        return f"<Handler {self.name}>"


def _is_async(func: Any) -> bool:
    """Whether calling ``func`` returns a coroutine: an ``async def`` function or method, a partial of one,
    or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func):
        return False
    return inspect.iscoroutinefunction(_dunder_call(func))


def _dunder_call(obj: Any) -> Any:
    """The ``__call__`` defined by ``obj``'s class (None if none): what calling the instance runs."""
    return inspect.getattr_static(type(obj), "__call__", None)


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(problem: str, fix: str = "check --handler / SHARDLEASE_HANDLER") -> ConfigError:
    return ConfigError(_SETTING, _one_line(problem), fix)


def _accepts(func: Callable[..., Any], nargs: int) -> bool:
    """Whether ``func`` can be called with ``nargs`` positional arguments (True if unknowable)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*([None] * nargs))
    except TypeError:
        return False
    return True


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback, or of a SyntaxError."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    # Skip importlib's own frames.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise _error(
                f"module {module_name!r} not found",
                "check --handler / SHARDLEASE_HANDLER and that the module is installed or in the "
                "current directory",
            ) from None
        raise _error(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{_where(exc)}",
            "install what the module imports, or fix the module",
        ) from None
    except Exception as exc:  # ImportError, SyntaxError, anything raised at import time
        raise _error(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{_where(exc)}",
            "fix the module, then check --handler / SHARDLEASE_HANDLER",
        ) from None


OWN_PACKAGES = ("worker", "leaser")
"""shardlease's own top-level packages: a user's module of the same name is loaded by file path."""
_PRIVATE_PREFIX = "_shardlease_user_"


def _own_package_file(top: str) -> str:
    module = sys.modules.get(top) or importlib.import_module(top)
    return os.path.realpath(getattr(module, "__file__", "") or "")


def _user_module_shadowed(module_name: str, cwd: str) -> Any | None:
    """Import the user's ``module_name`` from ``cwd`` when its top-level name is one of shardlease's own
    packages (``worker``, ``leaser``), which win on ``sys.path``: ``./worker.py`` (or ``./worker/``) is
    loaded by file path under a private name.  None when ``cwd`` holds no such module."""
    top, _, rest = module_name.partition(".")
    if top not in OWN_PACKAGES:
        return None
    package_init = os.path.join(cwd, top, "__init__.py")
    single = os.path.join(cwd, f"{top}.py")
    if os.path.isfile(package_init):
        location, search = package_init, [os.path.dirname(package_init)]
    elif os.path.isfile(single) and not rest:
        location, search = single, None
    else:
        return None
    if os.path.realpath(location) == _own_package_file(top):
        return None  # shardlease's own sources (running from a checkout)
    private = _PRIVATE_PREFIX + top
    if getattr(sys.modules.get(private), "__file__", None) != location:
        spec = importlib.util.spec_from_file_location(private, location, submodule_search_locations=search)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
            raise _error(f"cannot load {location}", "rename your module (e.g. myapp_handler.py)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[private]
            raise _error(
                f"importing {location} (your {top!r}, loaded by path as shardlease's own package has that "
                f"name) failed: {type(exc).__name__}: {exc}{_where(exc)}",
                "fix the module, or rename it (e.g. myapp_handler.py) and update --handler",
            ) from None
    return _import(f"{private}.{rest}") if rest else sys.modules[private]


def as_handler(obj: Any, *, name: str = "") -> Handler:
    """Wrap a function, class or instance as a :class:`Handler` (classes are instantiated once)."""
    label = name or _describe(obj)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise _error(f"{label}() failed: {type(exc).__name__}: {exc}") from None
    method = getattr(obj, "handle", None)
    if method is not None and not inspect.isfunction(obj):
        if not callable(method):
            raise _error(f"{label}.handle is not callable")
        handle = method
    elif callable(obj):
        handle = obj
    else:
        raise _error(
            f"{label} is a {type(obj).__name__}, not a function or an object with handle(records, ctx)",
            "point --handler / SHARDLEASE_HANDLER at a function handle(records, ctx) or a class",
        )
    if inspect.isasyncgenfunction(handle) or inspect.isasyncgenfunction(_dunder_call(handle)):
        raise _error(f"{label} is an async generator (it has a yield), so calling it would run nothing",
                     "make it async def handle(records, ctx) without yield, or a plain function")
    if not _accepts(handle, 2):
        raise _error(f"{label} cannot be called as handle(records, ctx)",
                     "give the handler exactly two positional parameters: records, ctx")
    hooks: dict[str, Callable[..., Any] | None] = {}
    for hook in (*HOOKS, "close"):
        func = None if inspect.isfunction(obj) else getattr(obj, hook, None)
        if func is None:
            hooks[hook] = None
            continue
        nargs = 0 if hook == "close" else 1
        if inspect.isasyncgenfunction(func):
            raise _error(f"{label}.{hook} is an async generator (it has a yield), so calling it would run nothing",
                         "remove the yield")
        if not callable(func) or not _accepts(func, nargs):
            signature = "close()" if hook == "close" else f"{hook}(ctx)"
            raise _error(f"{label}.{hook} cannot be called as {signature}",
                         f"define it as def {signature.replace('(', '(self, ').replace(', )', ')')}")
        hooks[hook] = func
    return Handler(
        obj,
        handle,
        name=label,
        on_lease_gained=hooks["on_lease_gained"],
        on_lease_lost=hooks["on_lease_lost"],
        on_shard_end=hooks["on_shard_end"],
        close=hooks["close"],
    )


def load_handler(path: str, *, add_cwd_to_path: bool = True) -> Handler:
    """Import ``package.module:attr`` and wrap it (see :func:`as_handler`).

    With ``add_cwd_to_path`` the current directory is appended to ``sys.path`` if absent,
    so ``--handler myhandlers:handle`` finds ``./myhandlers.py`` under the console script.
    Any problem raises a one-line :class:`~leaser.errors.ConfigError` for ``handler``.
    """
    path = str(path).strip()
    if not _PATH_RE.match(path):
        raise _error(f"{path!r} is not an import path", "use --handler package.module:function")
    module_name, attr_path = path.split(":", 1)
    if add_cwd_to_path:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
    shadowed = _user_module_shadowed(module_name, os.getcwd())
    obj: Any = shadowed if shadowed is not None else _import(module_name)
    walked = module_name
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            top = module_name.partition(".")[0]
            if shadowed is None and top in OWN_PACKAGES and walked == module_name:
                raise _error(
                    f"{module_name!r} is shardlease's own package, which has no {attr!r}, and the current "
                    f"directory {os.getcwd()} holds no {top}.py to load instead",
                    f"run from the directory of your {top}.py, or rename your module (e.g. myapp_handler.py) "
                    "and update --handler",
                ) from None
            raise _error(
                f"{walked!r} has no attribute {attr!r}",
                "check the name after ':' in --handler / SHARDLEASE_HANDLER",
            ) from None
        walked = f"{walked}:{attr}" if walked == module_name else f"{walked}.{attr}"
    return as_handler(obj, name=path)


# ----------------------------------------------------------------------------
# The built-in handler.
# ----------------------------------------------------------------------------


def log_records(records: Sequence[Any], ctx: ShardContext) -> None:
    """The default handler: log one line per batch (shard, count, first and last sequence number)."""
    first = getattr(records[0], "sequence_number", None) if records else None
    last = getattr(records[-1], "sequence_number", None) if records else None
    log.info(
        "batch of %d records from %s: first sequence number %s, last %s",
        len(records),
        ctx.shard_id,
        first,
        last,
        extra={"shard_id": ctx.shard_id, "worker_id": ctx.worker_id, "group": ctx.group},
    )
