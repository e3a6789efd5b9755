"""Chaos, in CI: real workers, a real Redis and the local endpoint (splits, rollovers, throttling,
expiring iterators, internal errors) under steady writes, with faults injected at seeded random
moments.  After each run: nothing lost, order per key, parents before children, no checkpoint
moved backwards, paused workers fenced off, duplicates bounded.  See docs/chaos.md.

Replay a run with ``CHAOS_SEED=<seed printed by the run>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import LEASE_TTL_S, Chaos, assert_duplicates_bounded, chaos, wait_until

pytestmark = pytest.mark.e2e

WARMUP_S = 3.0


def topology_and(c: Chaos, faults: list[tuple[float, str]], end_s: float) -> None:
    """A split at 2.5 s and a rollover at 7 s (after the first fault), plus ``faults`` at jittered times."""
    plan = [(2.5, "split"), (7.0, "rollover"), *[(t + c.rng.uniform(-0.5, 0.5), f) for t, f in faults]]
    for t, action in sorted(plan):
        c.sleep_until(t)
        getattr(c, action)()
    c.sleep_until(end_s)


def test_sigkill_workers(tmp_path: Path) -> None:
    with chaos(tmp_path, "sigkill") as c:
        topology_and(c, [(5.0, "sigkill"), (10.0, "sigkill")], end_s=14.0)
        report, _ = c.finish()
    assert_duplicates_bounded(report, faults=2)


def test_sigterm_workers(tmp_path: Path) -> None:
    with chaos(tmp_path, "sigterm") as c:
        topology_and(c, [(5.0, "sigterm"), (10.0, "sigterm")], end_s=14.0)
        report, _ = c.finish()
    # A SIGTERM hands over after the batch in flight: no duplicates at all.
    assert report.duplicates == 0, report.dup_per_shard


def test_sigstop_past_the_lease_ttl(tmp_path: Path) -> None:
    """A worker paused 3 lease TTLs wakes up believing it owns its shards: it is fenced off."""
    with chaos(tmp_path, "sigstop") as c:
        topology_and(c, [(4.0, "pause")], end_s=15.0)
        report, _ = c.finish()
    assert c.pauses and c.pauses[0].continued_at - c.pauses[0].stopped_at >= 3 * LEASE_TTL_S - 0.1
    assert_duplicates_bounded(report, faults=1)


def test_redis_kill9_with_append_only_file(tmp_path: Path) -> None:
    with chaos(tmp_path, "redis-restart", persistent=True) as c:
        topology_and(c, [(5.0, "restart_redis"), (10.0, "restart_redis")], end_s=14.0)
        report, _ = c.finish()
        logs = "".join(c.fleet.log_text(n) for n in c.fleet.procs)
    assert "REDIS LOST THE GROUP'S STATE" not in logs
    # One group epoch throughout: the append-only file kept the group's state.
    assert len({o.created_ms for o in c.poller.observations} - {''}) == 1
    assert_duplicates_bounded(report, faults=2)


def test_dropped_redis_connections(tmp_path: Path) -> None:
    with chaos(tmp_path, "proxy-cuts", proxy=True) as c:
        cuts = sorted(c.rng.uniform(WARMUP_S, 13.0) for _ in range(6))
        topology_and(c, [(t, "cut") for t in cuts], end_s=14.0)
        report, _ = c.finish()
    assert c.proxy is not None and c.proxy.connections_cut > 0
    assert_duplicates_bounded(report, faults=len(cuts))


def test_mixed_random_faults(tmp_path: Path) -> None:
    with chaos(tmp_path, "mixed", proxy=True) as c:
        kinds = ["sigkill", "sigterm", "pause", "restart_redis", "cut", "cut"]
        chosen = [c.rng.choice(kinds) for _ in range(4)]
        t = WARMUP_S
        plan: list[tuple[float, str]] = []
        for kind in chosen:
            plan.append((t, kind))
            t += 3.5 + (3 * LEASE_TTL_S if kind == "pause" else 0)
        topology_and(c, plan, end_s=max(t, 14.0))
        report, _ = c.finish()
    assert_duplicates_bounded(report, faults=len(chosen))


def test_redis_without_persistence_restarts_empty(tmp_path: Path) -> None:
    """Redis restarted empty: the group starts over from TRIM_HORIZON (every record handled, those
    before the restart again), and the workers say so loudly."""
    with chaos(tmp_path, "redis-empty", persistent=False) as c:
        topology_and(c, [(6.0, "restart_redis")], end_s=12.0)
        report, rows = c.finish(group_reset=True)
        logs = {n: c.fleet.log_text(n) for n in c.fleet.procs}
    assert all("REDIS LOST THE GROUP'S STATE" in text for text in logs.values()), "a worker did not log the reset"
    assert len({o.created_ms for o in c.poller.observations} - {""}) == 2
    # Records handled before the restart were handled again after it (from TRIM_HORIZON).
    killed_at = c.started_wall + next(t for t, kind, _ in c.faults if kind == "redis-kill")
    before = {r.seq for r in rows if r.t < killed_at}
    again = {r.seq for r in rows if r.t > killed_at}
    assert before and before <= again, f"{len(before - again)} records not handled again"
    assert report.duplicates >= len(before)


def test_replica_promoted_after_losing_writes(tmp_path: Path) -> None:
    """A replica detached from the primary, then promoted 3.5 s later: meanwhile the fleet works on the
    primary (a third worker joins and takes leases by handoff, a rollover, renewals, checkpoints), all
    of which the replica misses.  The proxy is retargeted at the replica, every connection cut, the
    primary killed.  The fleet converges on the replica: nothing lost, order per key, parents before
    children, checkpoints never backwards on it; every token it issues is above every token the old
    primary issued, and every handler call on a lease it granted carries a token above every token a
    handler saw for that shard before the failover.  Duplicates (the replay from its older
    checkpoints, and old owners' calls before they heard from it) are expected and reported."""
    calls = tmp_path / "calls.jsonl"
    with chaos(tmp_path, "replica-failover", persistent=False, proxy=True, replica=True, workers=2,
               handler_env={"CHAOS_CALLS": str(calls)}) as c:
        detach = 5.0 + c.rng.uniform(-0.5, 0.5)
        for t, action in [(2.5, c.split), (detach, c.detach_replica),
                          (detach + 0.2, lambda: c.note("join", c.start_worker())), (detach + 1.0, c.rollover)]:
            c.sleep_until(t)
            action()
        c.sleep_until(detach + 3.5)
        # The replica must have missed at least one acquisition (the joiner's handoffs, the rollover's child).
        assert wait_until(c.missed_acquisitions, 3.0), "no lease acquisition on the primary since the detach"
        c.fail_over()
        c.sleep_until(c.t() + 5.5)
        report, _ = c.finish()
        logs = "".join(c.fleet.log_text(n) for n in c.fleet.procs)
    f = c.failover
    assert f is not None and f.min_after, "no handler call on a lease the promoted replica granted"
    assert "REDIS LOST THE GROUP'S STATE" not in logs  # the replica has the group, only behind
    assert len({o.created_ms for o in f.primary_observations + c.poller.observations} - {""}) == 1
    print(f"  duplicates {report.duplicates}: {f.replayed} replayed from the replica's older checkpoints, "
          f"{f.stale_rows} handled late with an old token")
