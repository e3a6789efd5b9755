"""Regression tests for runtime failure paths (issue 10), end to end: real worker processes, a real
redis-server and the local stream endpoint, through the chaos harness.

Each test states the behaviour after the runtime-correctness change; every one of them failed on the
code before it (the failure each saw is in docs/chaos.md).  Replay a run with
``CHAOS_SEED=<seed printed by the run>``.

Timing (lease TTL 2 s, renew 0.5 s, as in every chaos scenario): each test stays under ~25 s.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from leaser.errors import ConfigError
from tests.chaos.harness import (
    LEASE_TTL_S,
    SHARDS,
    Call,
    Chaos,
    Close,
    chaos_seed,
    overlapping_calls,
    ownership_changes,
    parse_ts,
    read_calls,
    wait_until,
)
from worker.config import load_run_config

pytestmark = pytest.mark.e2e

FAULTY = "tests.chaos.faulty_handler:FaultyHandler"
NO_ENDPOINT_FAULTS: dict[str, Any] = {"empty_page_probability": 0.0}
"""For the tests that time a fault against one call: no throttling, no injected errors, no empty pages."""


def faulty_env(tmp: Path, mode: str = "", target_n: int = -1, **extra: str) -> dict[str, str]:
    return {"FAULTY_MODE": mode, "FAULTY_TARGET_N": str(target_n), "FAULTY_MARKER": str(tmp / "fault.json"),
            "CHAOS_CALLS": str(tmp / "calls.jsonl"), **extra}


def log_tail(c: Chaos, name: str, lines: int = 5) -> str:
    return " | ".join(c.fleet.log_text(name).strip().splitlines()[-lines:])


def assert_all_running(c: Chaos) -> None:
    dead = {n: p.returncode for n, p in c.fleet.procs.items() if p.poll() is not None}
    assert not dead, "; ".join(f"{n} exited with code {code}: {log_tail(c, n)}" for n, code in dead.items())


def wait_for_fault(c: Chaos, marker: Path, timeout_s: float) -> dict[str, Any]:
    """The faulting call's worker, pid, shard, token and start time, once its marker exists."""
    fired = wait_until(lambda: marker.exists() or any(p.poll() is not None for p in c.fleet.procs.values()),
                       timeout_s)
    assert_all_running(c)
    assert fired and marker.exists(), f"the injected fault never fired within {timeout_s} s"
    return dict(orjson.loads(marker.read_bytes()))


def describe_overlaps(pairs: list[tuple[Call, Call]]) -> str:
    def one(k: Call) -> str:
        end = "never returned" if k.end is None else f"{k.end - k.start:.2f} s"
        return f"{k.worker} (pid {k.pid}, token {k.token}) at {k.start:.3f} ({end})"

    return f"{len(pairs)} overlapping pairs, e.g. " + "; ".join(
        f"{a.shard}: {one(a)} and {one(b)}" for a, b in pairs[:2])


def shard_of_seq(c: Chaos) -> dict[str, str]:
    stream = c.server.model.stream(c.table.stream_arn)
    return {str(seq): sid for sid, shard in stream.shards.items() for seq in shard.seqs}


# -- 1. --initial-position LATEST with splits and rollovers -----------------------------------------


def test_latest_applies_only_to_shards_open_when_the_group_started(tmp_path: Path) -> None:
    """LATEST positions only the shards open when the group first started; every shard created later
    (split and rollover children) is read from TRIM_HORIZON, so nothing written after the group was
    reading is skipped."""
    c = Chaos(tmp_path, chaos_seed(), "latest", workers=2, handler_env={"CHAOS_SLOW_P": "0"},
              worker_settings={"initial-position": "LATEST"})
    with c:
        initial = set(c.server.model.shard_ids(c.table, open_only=True))
        # Ready: every initial shard was read at least once (a record of each was handled, so its
        # LATEST iterator was taken before that record was written, and it has a checkpoint).
        ready = wait_until(lambda: initial <= {r.shard for r in c.rows()}, 15, 0.2)
        assert ready, f"initial shards never all read: {sorted(initial - {r.shard for r in c.rows()})}"
        ready_index = len(c.written)
        c.note("ready", f"{ready_index} records written before")
        t0 = c.t()
        for i, action in enumerate(["split", "rollover", "split", "rollover", "split", "rollover"]):
            c.sleep_until(t0 + 0.8 + 1.2 * i)
            getattr(c, action)()
        c.sleep_until(t0 + 9.0)
        c.stop_writing()
        expected = set(c.written[ready_index:])
        rows = c.wait_drained(expected, 10)
        missing = expected - {r.seq for r in rows}
        where = collections.Counter(shard_of_seq(c).get(s, "?") for s in missing)
        created_later = {s for s in where if s not in initial}
        assert not missing, (f"{len(missing)} of {len(expected)} records written after the ready point never "
                             f"handled, per shard {dict(where)} ({len(created_later)} of those shards created "
                             f"after the group started)")
        c.drain_timeout_s = 5
        c.finish(expected=expected)  # order per key, parents before children, checkpoints monotonic


# -- 2. A handler raising a BaseException -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["systemexit", "cancelled"])
def test_handler_raising_a_base_exception_is_retried(tmp_path: Path, mode: str) -> None:
    """SystemExit / CancelledError from the handler (first attempt of one record only) is a handler
    failure like any other: retried (default: for ever), every record handled, the worker stays up
    and a later SIGTERM makes it exit 0 within a few seconds."""
    c = Chaos(tmp_path, chaos_seed(), f"raise-{mode}", workers=2, handler=FAULTY,
              handler_env=faulty_env(tmp_path, mode, target_n=100), writes_per_s=50)
    with c:
        fault = wait_for_fault(c, tmp_path / "fault.json", 15)
        c.note("fault", f"{mode} in {fault['w']} on {fault['shard']}")
        c.sleep_until(c.t() + 2.0)
        c.stop_writing()
        expected = set(c.written)
        rows = c.wait_drained(expected, 10)
        problems = []
        missing = expected - {r.seq for r in rows}
        if missing:
            stuck = collections.Counter(shard_of_seq(c).get(s, "?") for s in missing)
            problems.append(f"{len(missing)} of {len(expected)} records never handled after the handler raised "
                            f"{mode} on {fault['shard']}: per shard {dict(stuck)}")
        calls, _ = read_calls(tmp_path / "calls.jsonl")
        raised = [k for k in calls if k.error and k.shard == fault["shard"]]
        after = [k for k in calls if k.shard == fault["shard"] and k.start > fault["t"] and not k.error]
        assert raised, "the faulting call was not logged"
        if not after:
            problems.append(f"{fault['shard']} never called the handler again after the {mode}")
        dead = {n: p.returncode for n, p in c.fleet.procs.items() if p.poll() is not None}
        if dead:
            problems.append(f"workers exited: {dead}")
        else:
            sent = time.time()
            c.fleet.signal(fault["w"], signal.SIGTERM)
            code, gone = c.wait_exit(fault["w"], 8.0)
            if code != 0 or gone - sent > 5.0:
                problems.append(f"after SIGTERM {fault['w']} exited with {code} after {gone - sent:.1f} s "
                                f"(want 0 within 5 s)")
        assert not problems, "; ".join(problems)
        c.drain_timeout_s = 5
        c.finish()


# -- 3. A handler that never returns ----------------------------------------------------------------

HANDLER_TIMEOUT_S = 2.0
SHUTDOWN_GRACE_S = 2.0


def test_on_handler_timeout_setting() -> None:
    base = ["--stream-arn", "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024-01-01T00:00:00.000",
            "--handler", "worker.handling.handler:log_records"]
    assert load_run_config(base).on_handler_timeout == "exit"
    assert load_run_config([*base, "--on-handler-timeout", "warn"]).on_handler_timeout == "warn"
    with pytest.raises(ConfigError, match=r"--on-handler-timeout"):
        load_run_config([*base, "--on-handler-timeout", "ignore"])


def test_hung_handler_exits_the_worker_and_the_shard_moves(tmp_path: Path) -> None:
    """A handler call that never returns: after --handler-timeout the worker logs an ERROR naming the
    shard, hands its other shards back, keeps the hung shard's lease (left to expire) and exits 3; the
    other worker takes the shard over only after that; every record is handled."""
    c = Chaos(tmp_path, chaos_seed(), "hang", workers=2, handler=FAULTY,
              handler_env=faulty_env(tmp_path, "hang", target_n=100), writes_per_s=50,
              endpoint_faults=NO_ENDPOINT_FAULTS,
              worker_settings={"handler-timeout": str(HANDLER_TIMEOUT_S), "on-handler-timeout": "exit",
                               "shutdown-grace": str(SHUTDOWN_GRACE_S)})
    with c:
        fault = wait_for_fault(c, tmp_path / "fault.json", 15)
        hung, shard, hang_start = fault["w"], fault["shard"], fault["t"]
        held_at_hang = {s for s, (owner, _) in c.owners().items() if owner == hung}
        c.note("hang", f"{hung} (pid {fault['pid']}) on {shard}; it holds {sorted(held_at_hang)}")
        budget = HANDLER_TIMEOUT_S + SHUTDOWN_GRACE_S + 3.0
        code, died = c.wait_exit(hung, max(0.0, hang_start + budget - time.time()))
        c.note("hung-worker-exit", f"code {code}")
        assert code == 3, (f"the hung worker's exit code is {code}, want 3 within {budget:.0f} s of the hang "
                           f"(log: {log_tail(c, hung)})")
        c.sleep_until(c.t() + 2.0)
        c.stop_writing()
        expected = set(c.written)
        rows = c.wait_drained(expected, 10)
        missing = expected - {r.seq for r in rows}
        assert not missing, f"{len(missing)} of {len(expected)} records never handled"

        errors = [d for d in c.log_lines(hung) if d.get("level") == "ERROR" and "timeout" in d.get("msg", "").lower()
                  and shard in orjson.dumps(d).decode()]
        assert errors, f"no ERROR naming {shard} and the timeout in {hung}'s log"
        detected = parse_ts(errors[0]["ts"])
        assert hang_start + HANDLER_TIMEOUT_S - 0.1 <= detected <= hang_start + HANDLER_TIMEOUT_S + 1.5, (
            f"hang detected {detected - hang_start:.2f} s after it started (timeout {HANDLER_TIMEOUT_S} s)")
        calls, _ = read_calls(tmp_path / "calls.jsonl")
        late = [k for k in calls if k.pid == fault["pid"] and k.start > detected + 0.01]
        assert not late, f"the hung worker started {len(late)} handler calls after detecting the hang"
        hung_call = [k for k in calls if k.pid == fault["pid"] and k.start == hang_start]
        assert len(hung_call) == 1 and hung_call[0].end is None, "the hung call returned"
        overlaps = overlapping_calls(calls, died_at={fault["pid"]: died})
        assert not overlaps, f"calls on one shard by two processes overlap: {describe_overlaps(overlaps)}"
        taken = [k for k in calls if k.shard == shard and k.pid != fault["pid"] and k.start > hang_start]
        assert taken, f"nobody handled {shard} after the hang"

        # The hung shard's lease was left to expire (never seen free), the others were handed back first.
        def first_not_hung(s: str) -> float:
            return min((o.t for o in c.poller.observations if o.t > hang_start and s in o.leases
                        and o.leases[s][1] != hung), default=float("inf"))
        freed = [o.t for o in c.poller.observations if o.t > hang_start and o.leases.get(shard, ("", "x"))[1] == ""]
        assert not freed, f"{shard}'s lease was released while its handler call was hung"
        moved = first_not_hung(shard)
        slow_others = {s for s in held_at_hang - {shard} if first_not_hung(s) >= moved}
        assert not slow_others, f"{sorted(slow_others)} were not handed back before {shard}'s lease expired"
        c.drain_timeout_s = 5
        c.finish()


# -- 4. Batches longer than the handoff timeout ------------------------------------------------------

OBSERVE_S = 16.0
QUIET_S = 8.0


def test_handoff_with_batches_longer_than_the_handoff_timeout_settles(tmp_path: Path) -> None:
    """Worker A holds all 6 shards, every batch takes 2 s, --handoff-timeout is 1 s; worker B joins
    and asks for its share while every one of A's batches is in flight (held at a gate until B took
    leases by force, or for 6 s).  The leases move a bounded number of times, then stay put at 3 + 3."""
    gate = tmp_path / "gate"
    c = Chaos(tmp_path, chaos_seed(), "handoff", workers=1, handler=FAULTY, writes_per_s=20,
              handler_env=faulty_env(tmp_path, SHARDLEASE_TEST_SLOW_S="2", FAULTY_GATE=str(gate)),
              worker_settings={"handoff-timeout": "1"})
    with c:
        assert wait_until(lambda: len([o for o, _ in c.owners().values() if o == "w1"]) == SHARDS, 10), (
            f"w1 never held all {SHARDS} shards: {c.owners()}")
        gate.touch()
        gated = time.time()

        def gated_calls() -> set[str]:
            return {k.shard for k in read_calls(tmp_path / "calls.jsonl")[0] if k.start >= gated and k.end is None}

        assert wait_until(lambda: len(gated_calls()) == SHARDS, 6), f"batches in flight: {sorted(gated_calls())}"
        joined = time.time()
        b = c.start_worker()
        c.note("join", f"{b}, every batch of w1 in flight")
        fair = SHARDS // 2
        wait_until(lambda: sum(1 for o, _ in c.owners().values() if o == b) >= fair, 6)
        gate.unlink()
        c.note("gate-open", f"{b} holds {sum(1 for o, _ in c.owners().values() if o == b)}")
        time.sleep(max(0.0, joined + OBSERVE_S - time.time()))
        end = time.time()
        changes = ownership_changes(c.poller.observations, since=joined)
        owners = c.owners()
        timeline = ", ".join(f"+{t - joined:.1f}s {s[-8:]}->{o}" for t, s, o, _ in changes[:12])
        timeline += ", ..." if len(changes) > 12 else ""
        print(f"  ownership changes after {b} joined: {timeline}")
        assert len(changes) <= fair + 2, f"{len(changes)} ownership changes in {OBSERVE_S:.0f} s: {timeline}"
        late = [t for t, *_ in changes if t > end - QUIET_S]
        assert not late, f"ownership changed {len(late)} times in the last {QUIET_S:.0f} s: {timeline}"
        loads = collections.Counter(o for o, _ in owners.values())
        assert loads[b] == fair and loads["w1"] == fair, f"not settled at a fair share: {dict(loads)}"
        c.drain_timeout_s = 10
        c.finish()


# -- 5. A stale owner waking up after its lease expired ---------------------------------------------

GET_RECORDS_LATENCY_S = 1.5


def test_paused_owner_does_not_call_its_handler_after_its_lease_expired(tmp_path: Path) -> None:
    """SIGSTOP a worker while its GetRecords call on a shard is in flight (the endpoint answers that
    call 1.5 s late), SIGCONT it after 2.5 lease TTLs, when the other worker has its shards: it makes no
    handler call on any lease it held before the pause; no two processes handle a shard at once.

    Redis replies reach the workers 0.3 s late for 1.5 s around the wake-up (a slow network), so the
    heartbeat that tells the woken worker it lost its leases cannot beat the buffered GetRecords
    answer by luck: the worker must know by itself that it may no longer own them."""
    c = Chaos(tmp_path, chaos_seed(), "stale", workers=2, proxy=True, handler=FAULTY,
              handler_env=faulty_env(tmp_path), endpoint_faults=NO_ENDPOINT_FAULTS)
    with c:
        assert wait_until(lambda: len({o for o, _ in c.owners().values()}) == 2
                          and len(c.owners()) == SHARDS and len(c.rows()) > 50, 10), c.owners()
        owners = c.owners()
        shard = sorted(owners)[0]
        victim = owners[shard][0]
        in_flight = c.slow_get_records(shard, GET_RECORDS_LATENCY_S)
        assert in_flight.wait(5), f"no GetRecords on {shard}"
        held = {s: token for s, (o, token) in c.owners().items() if o == victim}
        stopped = time.time()
        c.fleet.signal(victim, signal.SIGSTOP)
        c.note("sigstop", f"{victim} with GetRecords on {shard} in flight; holding {sorted(held)}")
        moved = wait_until(lambda: all(c.owners().get(s, (victim, 0))[0] not in ("", victim) for s in held),
                           4 * LEASE_TTL_S)
        c.sleep_until(c.t() + max(0.0, stopped + 2.5 * LEASE_TTL_S - time.time()))
        assert moved, f"the other worker did not take {sorted(held)}: {c.owners()}"
        assert c.proxy is not None
        c.proxy.reply_delay_s = 0.3
        continued = time.time()
        c.fleet.signal(victim, signal.SIGCONT)
        c.note("sigcont", f"{victim} after {continued - stopped:.1f} s")
        time.sleep(1.5)
        c.proxy.reply_delay_s = 0.0
        time.sleep(2.0)
        c.stop_writing()
        calls, _ = read_calls(tmp_path / "calls.jsonl")
        mine = [k for k in calls if k.worker == victim]
        stale = [k for k in mine if k.start >= continued and held.get(k.shard) == k.token]
        assert not stale, (f"{len(stale)} handler calls on lost leases after the wake-up: "
                           + ", ".join(f"{k.shard[-8:]} token {k.token} +{k.start - continued:.2f}s" for k in stale))
        # A call the pause froze mid-way really overlaps the next owner's: that is not the worker's doing.
        frozen = [k for k in mine if k.start < stopped and (k.end is None or k.end > continued)]
        overlaps = [(a, b) for a, b in overlapping_calls(calls) if a not in frozen and b not in frozen]
        assert not overlaps, f"calls on one shard by two processes overlap: {describe_overlaps(overlaps)}"
        c.drain_timeout_s = 10
        c.finish()


# -- 6. Shutdown that runs out of time ---------------------------------------------------------------

SLOW_CALL_S = 5.0
GRACE_S = 1.0


def test_shutdown_grace_running_out_never_releases_a_lease_in_flight(tmp_path: Path) -> None:
    """SIGTERM while one handler call (5 s) is in flight and --shutdown-grace is 1 s: that lease is not
    released (left to expire), the process exits hard with code 3, close() never runs during handle(),
    and no other worker starts that shard before the old call ended or its process died."""
    c = Chaos(tmp_path, chaos_seed(), "grace", workers=2, handler=FAULTY,
              handler_env=faulty_env(tmp_path, "slow", target_n=100, FAULTY_SLOW_S=str(SLOW_CALL_S)),
              writes_per_s=50, endpoint_faults=NO_ENDPOINT_FAULTS, worker_settings={"shutdown-grace": str(GRACE_S)})
    with c:
        fault = wait_for_fault(c, tmp_path / "fault.json", 15)
        slow, shard, pid = fault["w"], fault["shard"], fault["pid"]
        time.sleep(max(0.0, fault["t"] + 0.3 - time.time()))
        sent = time.time()
        c.fleet.signal(slow, signal.SIGTERM)
        c.note("sigterm", f"{slow} with a {SLOW_CALL_S:.0f} s call on {shard} in flight")
        code, died = c.wait_exit(slow, SLOW_CALL_S + 5)
        c.note("exit", f"{slow} code {code} after {died - sent:.1f} s")
        c.sleep_until(c.t() + 2.0)
        c.stop_writing()
        expected = set(c.written)
        rows = c.wait_drained(expected, 10)
        calls, closes = read_calls(tmp_path / "calls.jsonl")
        problems = close_overlaps(calls, closes)
        slow_call = [k for k in calls if k.pid == pid and k.start == fault["t"]]
        assert len(slow_call) == 1
        old_start = slow_call[0].start
        old_end = slow_call[0].end if slow_call[0].end is not None else died
        # Another process's call on the shard while the old call ran (or its process lived); calls that
        # ended before it started (the shard's earlier owners) are history, not overlap.
        early = [k for k in calls if k.shard == shard and k.pid != pid and k.start < old_end
                 and (k.end if k.end is not None else float("inf")) > old_start]
        if early:
            problems.append(f"{early[0].worker} started {shard} {old_end - early[0].start:.2f} s before the old "
                            f"call ended (or its process died)")
        if code != 3 or died - sent > GRACE_S + 3.0:
            problems.append(f"{slow} exited with {code} {died - sent:.1f} s after SIGTERM (want 3 within "
                            f"{GRACE_S + 3.0:.0f} s: the call outlived the grace period)")
        missing = expected - {r.seq for r in rows}
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} records never handled")
        assert not problems, "; ".join(problems)
        c.drain_timeout_s = 5
        c.finish()
        calls, closes = read_calls(tmp_path / "calls.jsonl")
        assert any(k.pid != pid for k in closes), "the worker stopped cleanly never called close()"
        assert not close_overlaps(calls, closes)


def close_overlaps(calls: list[Call], closes: list[Close]) -> list[str]:
    """close() calls that ran while a handle() call of the same process was running."""
    out = []
    for close in closes:
        running = [k for k in calls if k.pid == close.pid and k.start < (close.end or float("inf"))
                   and (k.end is None or k.end > close.start)]
        if running:
            out.append(f"close() in {close.worker or close.pid} ran while {len(running)} handle() call(s) were running")
    return out
