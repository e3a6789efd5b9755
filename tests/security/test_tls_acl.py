"""Redis over TLS (one-way and mutual) with an ACL user that has only what a worker needs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from leaser import ConfigError, LeaseConfig, LeaseManager, LeaseStore, ShardSpec, connect
from leaser.embedded import RedisServer
from leaser.keys import GroupKeys
from tests.security.servers import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    WORKER_ACL_COMMANDS,
    WORKER_PASSWORD,
    WORKER_USER,
    Certs,
)
from worker.redis_setup import open_redis

ROOT = Path(__file__).resolve().parents[2]


def worker_url(server: RedisServer, password: str = WORKER_PASSWORD, user: str = WORKER_USER) -> str:
    return f"rediss://{user}:{password}@127.0.0.1:{server.port}/0"


def admin(server: RedisServer, certs: Certs) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username=ADMIN_USER, password=ADMIN_PASSWORD, ssl=True,
                       ssl_ca_certs=str(certs.ca), ssl_certfile=str(certs.client_cert),
                       ssl_keyfile=str(certs.client_key), decode_responses=True)


@pytest.fixture
def worker_client(mtls_server: RedisServer, certs: Certs) -> Iterator[redis.Redis]:
    client = connect(worker_url(mtls_server), ca_file=str(certs.ca), cert_file=str(certs.client_cert),
                     key_file=str(certs.client_key))
    assert isinstance(client, redis.Redis)
    yield client
    client.close()


def _denials(client: redis.Redis) -> list[str]:
    """ACL refusals of the worker user (CLIENT SETINFO aside: redis-py ignores its refusal, Redis < 7.2 lacks it)."""
    return [f"{e['reason']} {e['object']}" for e in client.acl_log()
            if e["username"] == WORKER_USER and e["object"] != "client|setinfo"]


def test_whole_protocol_over_mutual_tls_as_the_acl_user(
    worker_client: redis.Redis, mtls_server: RedisServer, certs: Certs
) -> None:
    boss = admin(mtls_server, certs)
    boss.acl_log_reset()
    group = f"tls-{uuid.uuid4().hex[:8]}"
    store = LeaseStore(worker_client, group, LeaseConfig(lease_ttl_s=2.0, renew_interval_s=0.5))
    wake = worker_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    wake.subscribe(store.keys.wake_channel)

    store.check_connection()
    assert store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)]) == {"p": "ready", "c": "blocked"}
    manager = LeaseManager(store, "w1")
    manager.tick()  # joins
    result = manager.tick()
    assert [a.shard_id for a in result.gained] == ["p"]
    assert manager.checkpoint("p", "100") is True
    assert store.heartbeat("w1", {"p": manager.token("p")}).lost == {}
    assert store.members() == {"w1": 1}
    assert store.held_by("w1") == ["p"]
    assert manager.end_shard("p") == ["c"]
    [child], _ = store.acquire("w1", ["c"])
    store.checkpoint("w1", "c", child.token, "200")
    store.ask("w2", "w1", 1)
    store.release("w1", "c", child.token, to="w2")
    assert store.grants("w2") == ["c"]
    assert store.leader("w1", 5000).owner in ("w1", "")
    store.resign_leader("w1")
    assert store.current_leader() is None
    assert store.candidates(5) == ["c"]  # free, reserved for w2 (acquire checks the reservation)
    assert [lease.checkpoint for lease in store.leases()] == ["SHARD_END", "200"]
    # The dead-letter stream lives in the group's slot too.
    dlq = GroupKeys.for_group(group).namespaced("dlq")
    entry = worker_client.xadd(dlq, {"batch": "x"})
    assert worker_client.xlen(dlq) == 1 and worker_client.xrange(dlq)[0][0] == entry
    worker_client.xdel(dlq, entry)
    # The wake message (the end made 'c' ready) reached the subscriber.
    messages = [wake.get_message(timeout=0.2) for _ in range(5)]  # the first may be the (ignored) subscribe reply
    assert "c" in [m["data"] for m in messages if m]
    wake.close()
    store.cleanup()
    # Scripts load again after SCRIPT FLUSH (an admin's, or a restart): NOSCRIPT -> SCRIPT LOAD as the worker.
    boss.script_flush()
    assert store.register_shards([ShardSpec("d", (), 3)]) == {"d": "ready"}
    assert store.heartbeat("w1", {}).lost == {}
    assert _denials(boss) == []


def test_the_acl_user_reaches_nothing_else(worker_client: redis.Redis, mtls_server: RedisServer, certs: Certs) -> None:
    admin(mtls_server, certs).set("other-app:secret", "x")
    denied = [
        lambda: worker_client.get("other-app:secret"),
        lambda: worker_client.hset("other:{g}:lease:a", "owner", "me"),
        lambda: worker_client.set("shardlease:{g}:token", "1"),  # SET is not needed: tokens only INCR
        lambda: worker_client.flushall(),
        lambda: worker_client.config_get("*"),
        lambda: worker_client.keys("*"),
        lambda: worker_client.publish("other-channel", "x"),
        lambda: worker_client.script_flush(),
        lambda: worker_client.execute_command("EVAL", "return redis.call('GET', KEYS[1])", 1, "shardlease:{g}:x"),
        lambda: worker_client.acl_list(),
    ]
    for call in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    group = f"tls-{uuid.uuid4().hex[:8]}"
    store = LeaseStore(worker_client, group)
    # A script can reach only keys its user may: one given another prefix is refused inside Redis.
    with pytest.raises(redis.exceptions.NoPermissionError):
        store._scripts["checkpoint"](keys=["other-app:secret"], args=["w", 1, "5"])


def test_every_command_the_scripts_call_is_granted(mtls_server: RedisServer, certs: Certs) -> None:
    boss = admin(mtls_server, certs)
    lua = "".join(p.read_text() for p in (ROOT / "leaser" / "lua").glob("*.lua"))
    commands = sorted({c.upper() for c in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", lua)})
    assert "HSET" in commands and "PUBLISH" in commands
    key = "shardlease:{g}:k"
    for command in commands:
        if command == "PUBLISH":
            tries = [["shardlease:{g}:wake", "x"]]
        elif command == "TIME":
            tries = [[]]
        else:  # the first arity the command accepts
            tries = [[key], [key, "1"], [key, "1", "2"]]
        answers = []
        for args in tries:
            try:
                answers.append(boss.execute_command("ACL", "DRYRUN", WORKER_USER, command, *args))
            except redis.exceptions.ResponseError as exc:  # wrong arity for this try
                answers.append(str(exc))
        assert "OK" in answers, f"{command}: {answers}"


def test_the_docs_give_the_tested_acl_rule() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    rules = re.findall(r"^ACL SETUSER shardlease (.+)$", text, re.M)
    assert rules, "docs/security.md should give the ACL SETUSER line"
    rule = rules[0]
    assert "resetkeys ~shardlease:{*}:* resetchannels &shardlease:{*}:wake" in rule
    assert rule.endswith(WORKER_ACL_COMMANDS)


def _open(url: str, **files: str | None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        open_redis(url, data_dir="/nonexistent", **files)
    return info.value


def _one_line_naming_url(err: ConfigError, *secrets: str) -> str:
    text = str(err)
    assert "\n" not in text and text.startswith("redis_url"), text
    for secret in secrets:
        assert secret not in text and secret not in repr(err), text
    assert err.__cause__ is None or all(s not in str(err.__cause__) for s in secrets)
    return text


def test_wrong_password_is_one_line_without_the_password(mtls_server: RedisServer, certs: Certs) -> None:
    tls = {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    text = _one_line_naming_url(_open(worker_url(mtls_server, "Wr0ng-Pass-7"), **tls), "Wr0ng-Pass-7")
    assert "refused the credentials" in text and f"{WORKER_USER}:***@" in text
    # No user at all: the default user is off, so the server refuses too.
    text = _one_line_naming_url(_open(f"rediss://127.0.0.1:{mtls_server.port}/0", **tls))
    assert "refused the credentials" in text


def test_untrusted_or_missing_ca_is_one_line(mtls_server: RedisServer, certs: Certs) -> None:
    client_pair = {"cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    url = worker_url(mtls_server)
    text = _one_line_naming_url(_open(url, ca_file=str(certs.other_ca), **client_pair), WORKER_PASSWORD)
    assert "not trusted" in text and "--redis-ca-file" in text
    # No CA given: the system's CAs do not trust a private CA either.
    text = _one_line_naming_url(_open(url, **client_pair), WORKER_PASSWORD)
    assert "not trusted" in text
    err = _open(url, ca_file="/nonexistent/ca.pem", **client_pair)
    assert str(err).startswith("redis_ca_file") and "\n" not in str(err)


def test_mutual_tls_requires_the_client_certificate(mtls_server: RedisServer, certs: Certs) -> None:
    url = worker_url(mtls_server)
    text = _one_line_naming_url(_open(url, ca_file=str(certs.ca)), WORKER_PASSWORD)
    assert "TLS" in text or "certificate" in text
    client, shown = open_redis(url, data_dir="/nonexistent", ca_file=str(certs.ca), cert_file=str(certs.client_cert),
                               key_file=str(certs.client_key))
    assert WORKER_PASSWORD not in shown and shown == f"rediss://{WORKER_USER}:***@127.0.0.1:{mtls_server.port}/0"
    client.close()
    err = _open(url, ca_file=str(certs.ca), cert_file=str(certs.client_cert))
    assert "needs both files" in str(err)


def test_one_way_tls_needs_no_client_certificate(tls_server: RedisServer, certs: Certs) -> None:
    client, _ = open_redis(worker_url(tls_server), data_dir="/nonexistent", ca_file=str(certs.ca))
    store = LeaseStore(client, f"tls-{uuid.uuid4().hex[:8]}")
    assert store.register_shards([ShardSpec("a")]) == {"a": "ready"}
    [got], _ = store.acquire("w", ["a"])
    assert store.checkpoint("w", "a", got.token, "7") is True
    client.close()
    # A plain redis:// URL against the TLS port does not get through.
    text = _one_line_naming_url(_open(f"redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{tls_server.port}/0"),
                                WORKER_PASSWORD)
    assert "cannot" in text


def test_status_trusts_a_private_ca_through_ssl_cert_file(tls_server: RedisServer, certs: Certs) -> None:
    """``shardlease status`` has no --redis-ca-file: SSL_CERT_FILE is the documented way (docs/security.md)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLEASE_")}
    done = subprocess.run([sys.executable, "-m", "worker", "status", "--redis-url", worker_url(tls_server)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**env, "SSL_CERT_FILE": str(certs.ca)})
    assert done.returncode == 0, done.stderr
    assert WORKER_PASSWORD not in done.stdout + done.stderr and f"{WORKER_USER}:***@" in done.stdout


def test_the_acl_user_publishes_its_shard_report(
    worker_client: redis.Redis, mtls_server: RedisServer, certs: Certs
) -> None:
    """The report `status` reads was written with MULTI/EXEC, which the ACL does not grant: under the documented
    ACL every report failed (logged at debug only) and `status` showed the worker with no shards."""
    store = LeaseStore(worker_client, "report-acl")
    store.report("w1", {"shard-a": "reading", "@metrics": "10.0.0.1:9400"}, ttl_s=5)
    assert store.reports(["w1"]) == {"w1": {"shard-a": "reading", "@metrics": "10.0.0.1:9400"}}
    assert 0 < admin(mtls_server, certs).pttl(store.keys.report("w1")) <= 5000  # (the ACL user may not ask)
    store.report("w1", {"shard-b": "idle"}, ttl_s=5)  # replaced, not merged
    assert store.reports(["w1"]) == {"w1": {"shard-b": "idle"}}
    store.report("w1", {}, ttl_s=5)
    assert store.reports(["w1"]) == {"w1": {}}
