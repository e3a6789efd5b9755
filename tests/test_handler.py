"""Loading the user's handler by import path, and the uniform adapter."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path
from types import SimpleNamespace

import pytest

from leaser.errors import ConfigError
from worker.handling.handler import Handler, ShardContext, as_handler, load_handler, log_records

# The sample module's import path, whether or not tests/ is a package.
MOD = f"{__package__}.handlers_for_tests" if __package__ else "handlers_for_tests"
samples = importlib.import_module(MOD)

CTX = ShardContext(shard_id="shardId-1", worker_id="w-1", stream_arn="arn:x", group="g", lease_token=7)


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    samples.CALLS.clear()
    yield
    samples.CALLS.clear()


def _records(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(sequence_number=str(100 + i)) for i in range(n)]


def test_context_is_frozen_and_keyword_only() -> None:
    with pytest.raises(FrozenInstanceError):
        CTX.lease_token = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        ShardContext("s", "w", "arn", "g", 1)  # type: ignore[misc]


def test_function_handler_gets_noop_hooks() -> None:
    handler = load_handler(f"{MOD}:handle")
    assert isinstance(handler, Handler)
    assert handler.handle(_records(3), CTX) is None
    handler.on_lease_gained(CTX)
    handler.on_lease_lost(CTX)
    handler.on_shard_end(CTX)
    handler.close()
    assert samples.CALLS == [("handle", (3, "shardId-1"))]


def test_return_value_passes_through() -> None:
    assert load_handler(f"{MOD}:returns_value").handle([], CTX) == {"batchItemFailures": []}


def test_class_is_instantiated_once_and_hooks_are_called() -> None:
    before = samples.FullHandler.instances
    handler = load_handler(f"{MOD}:FullHandler")
    assert samples.FullHandler.instances == before + 1
    handler.on_lease_gained(CTX)
    assert handler.handle(_records(2), CTX) == "handled"
    handler.on_shard_end(CTX)
    handler.on_lease_lost(CTX)
    handler.close()
    handler.close()  # idempotent
    assert samples.CALLS == [("gained", 7), ("handle", 2), ("end", "shardId-1"), ("lost", 7), ("close", None)]
    assert handler.target.closed == 1


def test_instance_and_callable_instance() -> None:
    load_handler(f"{MOD}:instance").handle(_records(1), CTX)
    load_handler(f"{MOD}:callable_instance").handle(_records(4), CTX)
    load_handler(f"{MOD}:HandleOnly").handle(_records(5), CTX)
    assert samples.CALLS == [("handle", 1), ("called", 4), ("handle_only", 5)]


def test_as_handler_wraps_python_objects_directly() -> None:
    seen: list[int] = []
    handler = as_handler(lambda records, ctx: seen.append(len(records)))
    handler.handle(_records(2), CTX)
    handler.on_lease_gained(CTX)
    assert seen == [2]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no_colon_here", "is not an import path"),
        ("pkg.mod:", "is not an import path"),
        ("bad-name:x", "is not an import path"),
        ("no_such_module_xyz:handle", "module 'no_such_module_xyz' not found"),
        (f"{MOD}:missing", "has no attribute 'missing'"),
        (f"{MOD}:NOT_CALLABLE", "not a function"),
        (f"{MOD}:wrong_arity", "cannot be called as handle(records, ctx)"),
        (f"{MOD}:FailingInit", "RuntimeError: cannot connect to the sink"),
        (f"{MOD}:BadHook", "on_lease_lost cannot be called as on_lease_lost(ctx)"),
    ],
)
def test_problems_are_one_line_config_errors(path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_handler(path)
    message = str(info.value)
    assert info.value.setting.startswith("handler")
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message
    assert "--handler" in message


def _write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)


def test_import_error_inside_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "broken_dep_handler", "import not_installed_dependency_xyz\n\ndef handle(r, c): pass\n")
    _write_module(tmp_path, "raises_at_import", "raise ImportError('cannot import name X\\nfrom Y')\n")
    _write_module(tmp_path, "syntax_error_handler", "def handle(r, c)\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, fragment in [
        ("broken_dep_handler", "No module named 'not_installed_dependency_xyz'"),
        ("raises_at_import", "ImportError: cannot import name X from Y"),
        ("syntax_error_handler", "SyntaxError"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_handler(f"{name}:handle")
        message = str(info.value)
        assert f"importing {name!r} failed" in message and fragment in message, message
        assert "\n" not in message
        assert f"{name}.py:" in message  # says where
        sys.modules.pop(name, None)


def test_current_directory_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "cwd_handler_mod", "def handle(records, ctx):\n    return len(records)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert load_handler("cwd_handler_mod:handle").handle(_records(3), CTX) == 3
    finally:
        sys.modules.pop("cwd_handler_mod", None)


def test_builtin_log_records(caplog: pytest.LogCaptureFixture) -> None:
    handler = load_handler("worker.handling.handler:log_records")
    with caplog.at_level(logging.INFO, logger="worker.handling.handler"):
        handler.handle(_records(3), CTX)
        log_records([], CTX)
    first, empty = caplog.records
    assert first.getMessage() == "batch of 3 records from shardId-1: first sequence number 100, last 102"
    assert first.shard_id == "shardId-1" and first.worker_id == "w-1"  # type: ignore[attr-defined]
    assert "batch of 0 records" in empty.getMessage()


def test_no_default_handler_in_config() -> None:
    from worker.config import RunConfig

    assert RunConfig().handler is None  # `shardlease run` requires --handler
    assert load_handler("worker.handling.handler:log_records").name == "worker.handling.handler:log_records"


def test_a_handler_module_named_like_our_packages_is_loaded_from_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "leaser.py").write_text("def handle(records, ctx):\n    return 'mine'\n")
    monkeypatch.chdir(tmp_path)
    handler = load_handler("leaser:handle")
    assert handler.handle([], CTX) == "mine"
    import leaser

    assert leaser.LeaseStore  # shardlease's own package is untouched
    assert load_handler("worker.handling.handler:log_records").name == "worker.handling.handler:log_records"
    (tmp_path / "worker.py").write_text("raise RuntimeError('broken')\n")
    with pytest.raises(ConfigError, match=r"importing .*worker.py \(your 'worker', loaded by path.*RuntimeError"):
        load_handler("worker:handle")
