"""The settings table: flags, environment variables, defaults, validation, README table."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest

from leaser.errors import ConfigError
from worker import config
from worker.config import (
    RUN_SETTINGS,
    RunConfig,
    add_run_arguments,
    env_names,
    load_run_config,
    markdown_table,
    parse_bool,
    parse_duration,
    validate_run_config,
)

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-11-26T13:00:00.000"
HANDLER = "worker.handling.handler:log_records"
BASE = ["--stream-arn", ARN, "--handler", HANDLER]


def load(argv: list[str], env: dict[str, str] | None = None, **kw: bool) -> RunConfig:
    return load_run_config(argv, env or {}, **kw)


def error(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_table_and_dataclass_agree() -> None:
    names = [s.name for s in RUN_SETTINGS]
    assert names == [f.name for f in dataclasses.fields(RunConfig)]
    assert len(set(names)) == len(names)
    for setting in RUN_SETTINGS:
        assert setting.env == "SHARDLEASE_" + setting.flags[0].lstrip("-").replace("-", "_").upper()
        assert setting.help.endswith(".") and "\n" not in setting.help
        assert setting.flags[0].startswith("--")


def test_defaults() -> None:
    cfg = load(BASE)
    assert cfg.stream_arn == ARN and cfg.table is None
    assert cfg.group == "default"
    assert cfg.handler == HANDLER
    assert cfg.redis_url is None and cfg.data_dir == ".shardlease"
    assert cfg.initial_position == "TRIM_HORIZON"
    assert cfg.batch_size == 100
    assert (cfg.lease_ttl_s, cfg.renew_interval_s) == (5.0, 1.5)
    assert cfg.worker_id.endswith(f"-{__import__('os').getpid()}")
    assert (cfg.metrics_port, cfg.metrics_host) == (None, "0.0.0.0")  # None: 9400 or the next free port
    assert (cfg.log_format, cfg.log_level) == ("text", "INFO")
    assert cfg.idle_poll_interval_s == 4.0 and cfg.shutdown_grace_s == 20.0
    assert (cfg.active_poll_interval_s, cfg.quiet_after_s, cfg.checkpoint_interval_s) == (1.0, 60.0, 0.0)
    assert cfg.shard_sync_interval_s == 60.0 and cfg.handoff_timeout_s == 10.0
    assert cfg.max_shards == 0
    assert cfg.max_getrecords_per_second == 0.0  # no budget: pacing alone, as before
    assert cfg.endpoint_url is None and cfg.region is None
    assert cfg.redis_ca_file is None
    # The defaults of the table and of the dataclass are the same.
    direct = RunConfig(stream_arn=ARN, handler=HANDLER, worker_id=cfg.worker_id)
    assert direct == cfg


def test_frozen_with_slots() -> None:
    cfg = load(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 5  # type: ignore[misc]
    assert not hasattr(cfg, "__dict__")
    assert dataclasses.replace(cfg, batch_size=5).batch_size == 5


def test_flag_beats_env_beats_default() -> None:
    env = {"SHARDLEASE_BATCH_SIZE": "50", "SHARDLEASE_GROUP": "from-env", "SHARDLEASE_LOG_LEVEL": "debug"}
    cfg = load([*BASE, "--batch-size", "7"], env)
    assert cfg.batch_size == 7
    assert cfg.group == "from-env"
    assert cfg.log_level == "DEBUG"
    assert cfg.lease_ttl_s == 5.0


def test_empty_values_count_as_unset() -> None:
    cfg = load([*BASE, "--group", ""], {"SHARDLEASE_REDIS_URL": "", "SHARDLEASE_BATCH_SIZE": " "})
    assert cfg.group == "default" and cfg.redis_url is None and cfg.batch_size == 100


def test_env_alone_configures_everything() -> None:
    cfg = load([], {"SHARDLEASE_TABLE": "orders", "SHARDLEASE_INITIAL_POSITION": "latest",
                    "SHARDLEASE_HANDLER": HANDLER, "SHARDLEASE_LEASE_TTL": "10", "SHARDLEASE_RENEW_INTERVAL": "2.5"})
    assert cfg.table == "orders" and cfg.initial_position == "LATEST"
    assert (cfg.lease_ttl_s, cfg.renew_interval_s) == (10.0, 2.5)


def test_app_alias_and_namespace_input() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    ns = parser.parse_args(["--app", "orders-indexer", "--table", "orders", "--handler", HANDLER])
    cfg = load_run_config(ns, {})
    assert cfg.group == "orders-indexer" and cfg.table == "orders"


def test_help_mentions_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    parser.print_help()
    out = " ".join(capsys.readouterr().out.split())
    for setting in RUN_SETTINGS:
        assert setting.flags[0] in out
        assert setting.env in out


@pytest.mark.parametrize(
    ("argv", "env", "fragments"),
    [
        (["--initial-position", "FOO"], {}, ["initial_position", "--initial-position",
                                              "SHARDLEASE_INITIAL_POSITION", "TRIM_HORIZON, LATEST"]),
        (["--batch-size", "0"], {}, ["batch_size (--batch-size / SHARDLEASE_BATCH_SIZE)", "out of range"]),
        (["--batch-size", "10001"], {}, ["batch_size", "at most 10000"]),
        (["--batch-size", "ten"], {}, ["'ten' is not an integer"]),
        ([], {"SHARDLEASE_BATCH_SIZE": "2.5"}, ["(from SHARDLEASE_BATCH_SIZE)"]),
        (["--lease-ttl", "0.5"], {}, ["lease_ttl_s", "at least 1"]),
        (["--lease-ttl", "301"], {}, ["lease_ttl_s", "at most 300"]),
        (["--lease-ttl", "-5"], {}, ["non-negative"]),
        (["--lease-ttl", "nan"], {}, ["lease_ttl_s", "not a number of seconds"]),
        (["--shutdown-grace", "inf"], {}, ["shutdown_grace_s"]),
        (["--renew-interval", "2.5"], {}, ["renew_interval_s", "lease_ttl_s", "--renew-interval",
                                           "--lease-ttl", "less than half"]),
        (["--renew-interval", "0"], {}, ["renew_interval_s", "greater than 0"]),
        (["--group", "a{b}"], {}, ["group (--group / SHARDLEASE_GROUP)", "no braces"]),
        (["--worker-id", "has space"], {}, ["worker_id (--worker-id / SHARDLEASE_WORKER_ID)"]),
        (["--redis-url", "http://u:pw@host"], {}, ["redis_url", "unsupported URL scheme (http)", "rediss://"]),
        (["--handler", "nocolon"], {}, ["handler", "package.module:function"]),
        (["--log-format", "xml"], {}, ["log_format", "text, json"]),
        (["--log-level", "chatty"], {}, ["log_level", "DEBUG, INFO"]),
        (["--metrics-port", "70000"], {}, ["metrics_port"]),
        (["--max-shards", "-1"], {}, ["max_shards"]),
        (["--max-getrecords-per-second", "-1"], {}, ["max_getrecords_per_second (--max-getrecords-per-second / "
                                                     "SHARDLEASE_MAX_GETRECORDS_PER_SECOND)", "0 (no budget)"]),
        (["--max-getrecords-per-second", "fast"], {}, ["max_getrecords_per_second", "calls per second such as 50"]),
        ([], {"SHARDLEASE_MAX_GETRECORDS_PER_SECOND": "inf"}, ["max_getrecords_per_second", "out of range"]),
        (["--max-getrecords-per-second", "0.001"], {}, ["max_getrecords_per_second", "from 0.01"]),
        (["--endpoint-url", "localhost:8000"], {}, ["endpoint_url", "http"]),
        (["--redis-ca-file", "/no/such/file.pem"], {}, ["redis_ca_file", "does not exist"]),
        (["--bogus", "1"], {}, ["unrecognized arguments: --bogus 1"]),
        ([], {"SHARDLEASE_BISECT_ON_ERROR": "maybe"}, ["bisect_on_error", "not a boolean",
                                                       "(from SHARDLEASE_BISECT_ON_ERROR)"]),
    ],
)
def test_bad_values_name_setting_and_fix(argv: list[str], env: dict[str, str], fragments: list[str]) -> None:
    message = error([*BASE, *argv], env)
    for fragment in fragments:
        assert fragment in message, message
    assert "; " in message  # "setting: problem; fix"


def test_secrets_never_in_errors() -> None:
    assert "pw" not in error([*BASE, "--redis-url", "http://u:pw@host"])


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:dynamodb:us-east-1:12345678901:table/t/stream/x",  # 11-digit account
        "arn:aws:kinesis:us-east-1:123456789012:stream/x",
        "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
        "orders",
    ],
)
def test_arn_shape(arn: str) -> None:
    assert "not a DynamoDB stream ARN" in error(["--stream-arn", arn, "--handler", HANDLER])


def test_good_arns() -> None:
    for arn in (ARN, "arn:aws-cn:dynamodb:cn-north-1:000000000000:table/my.table-1/stream/label"):
        assert load(["--stream-arn", arn, "--handler", HANDLER]).stream_arn == arn


def test_exactly_one_stream_source() -> None:
    assert "no stream to consume" in error(["--handler", HANDLER])
    assert "both are set" in error([*BASE, "--table", "orders"])
    assert load(["--handler", HANDLER], require_stream=False).stream_arn is None  # a caller with its own stream
    assert "not a DynamoDB table name" in error(["--table", "x"])
    assert load(["--table", "orders"], require_handler=False).handler is None  # a caller with its own handler


def test_redis_urls_and_tls_files(tmp_path: Path) -> None:
    for url in ("redis://localhost:6379/0", "rediss://u:p@h:6380/1", "unix:///tmp/redis.sock"):
        assert load([*BASE, "--redis-url", url]).redis_url == url
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    cfg = load([*BASE, "--redis-url", "rediss://h:6380", "--redis-ca-file", str(ca)])
    assert cfg.redis_ca_file == str(ca)
    assert "only apply to a rediss://" in error([*BASE, "--redis-ca-file", str(ca)])


def test_repr_redacts_redis_password() -> None:
    cfg = load([*BASE, "--redis-url", "redis://user:s3cret@host:6379/0"])
    assert cfg.redis_url == "redis://user:s3cret@host:6379/0"
    assert "s3cret" not in repr(cfg) and "redis://user:***@host" in repr(cfg)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="less than half"):
        RunConfig(lease_ttl_s=2, renew_interval_s=1)
    with pytest.raises(ConfigError, match="no stream"):
        validate_run_config(RunConfig())


def test_parse_duration() -> None:
    assert parse_duration("5") == 5.0
    assert parse_duration("1.5") == 1.5
    assert parse_duration(" 250ms ") == 0.25
    assert parse_duration("2s") == 2.0 and parse_duration("1m") == 60.0
    for bad in ("-1", "nan", "inf", "", "five", "1h", "1e400"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert not math.isnan(parse_duration("0"))


def test_parse_bool() -> None:
    for text in ("true", "1", "YES", "on"):
        assert parse_bool(text) is True
    for text in ("false", "0", "no", "Off"):
        assert parse_bool(text) is False
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_env_names() -> None:
    names = env_names()
    assert "SHARDLEASE_REDIS_URL" in names and "SHARDLEASE_LEASE_TTL" in names
    assert len(names) == len(RUN_SETTINGS)


def test_markdown_table() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Setting")]
    assert len(rows) == len(RUN_SETTINGS)
    for _, title in config.GROUPS:  # one table per group, under its title, in the order of GROUPS
        assert f"**{title}**" in table
    titles = [table.index(f"**{title}**") for _, title in config.GROUPS]
    assert titles == sorted(titles)
    for setting in RUN_SETTINGS:
        [line] = [r for r in rows if r.startswith(f"| {setting.name} |")]
        assert line.count(" | ") == 4, line  # no stray pipes inside cells
        assert f"`{setting.env}`" in line and setting.flags[0] in line
        title = dict(config.GROUPS)[setting.group]
        assert table.index(f"**{title}**") < table.index(line)
    assert "`--group`, `--app`" in table
    assert "<hostname>-<pid>" in table
    assert "| bisect_on_error | `--bisect-on-error` / `--no-bisect-on-error` (a switch) | " \
           "`SHARDLEASE_BISECT_ON_ERROR` (`true`/`false`) | `off` |" in table
    assert "| handler | `--handler` | `SHARDLEASE_HANDLER` | (required) |" in table


def test_every_setting_has_a_known_group() -> None:
    keys = [key for key, _ in config.GROUPS]
    assert {s.group for s in RUN_SETTINGS} == set(keys)


def test_switches_take_no_value_and_have_a_no_form() -> None:
    switches = [s for s in RUN_SETTINGS if s.is_switch]
    assert {s.name for s in switches} == {"bisect_on_error", "stop_on_failure", "per_shard_metrics", "snapshot"}
    for setting in switches:
        flag = setting.flags[0]
        assert getattr(load([*BASE, flag]), setting.name) is True
        assert getattr(load([*BASE, setting.no_flag], {setting.env: "true"}), setting.name) is False  # flag wins
        assert getattr(load(BASE, {setting.env: "true"}), setting.name) is True
        assert getattr(load(BASE, {setting.env: "false"}), setting.name) is False
        assert getattr(load(BASE), setting.name) is False
        assert "unrecognized arguments: true" in error([*BASE, flag, "true"])


def test_help_shows_each_default_once_and_readably(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    parser.print_help()
    out = " ".join(capsys.readouterr().out.split())
    assert "default default" not in out and "default: default" not in out
    assert '[env SHARDLEASE_GROUP; default: "default"]' in out
    assert "[env SHARDLEASE_LEASE_TTL; default: 5s]" in out
    assert "[env SHARDLEASE_BISECT_ON_ERROR=true/false; default: off]" in out
    assert "[env SHARDLEASE_HANDLER; required]" in out
    assert out.count("default:") == len(RUN_SETTINGS) - 1  # every setting but --handler, once each


def test_extending_the_table_is_one_row() -> None:
    # A later setting is a Setting row plus a RunConfig field; the machinery picks it up.
    extra = config.Setting("max_retries", ("--max-retries",), config.parse_int, -1, "Retries; -1 forever.")
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, [*RUN_SETTINGS, extra])
    assert parser.parse_args(["--max-retries", "3"]).max_retries == "3"
    assert extra.group == "delivery"
    assert extra.env == "SHARDLEASE_MAX_RETRIES"


def test_default_worker_id_is_a_valid_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.socket, "gethostname", lambda: "my host{1}")
    worker_id = config.default_worker_id()
    assert worker_id.startswith("my-host-1--")
    assert load(BASE).worker_id == worker_id
