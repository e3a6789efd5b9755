"""Run every benchmark and regenerate ``docs/benchmarks.md`` and its plots (``docs/img/*.png``).

    .venv/bin/python bench/report.py [--quick] [--only NAME,...] [--from-results DIR] [--results DIR]

Runs, one after the other (never in parallel: they share the cores), each benchmark as a child
process with ``--json``: ``leaser_scale``, ``worker_throughput``, ``handoff_pause``,
``discovery_cost``, ``idle_cost``, ``latency``, ``memory``, ``redis_cost``.  Their JSON and stdout go to
``--results`` (default: a fresh temporary directory, printed).  Then it writes the report with every
figure next to its anchor (KCL, Lambda, AWS limits, the issue's targets) and the plots.

``--quick`` (a smoke run, ~3 min): smaller sizes and shorter windows; the report says so.
``--from-results DIR``: skip running and rebuild the report from a previous run's JSON.
``--only``: run just these benchmarks (the others are missing from the report), or, with
``--results DIR`` of an earlier run, rerun these into it and rebuild the report from all of them.

The full run takes about 15-20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes as processes_bench  # noqa: E402
from bench._common import machine_info, percentile  # noqa: E402

# name -> (full arguments, quick arguments, timeout s)
BENCHES: dict[str, tuple[list[str], list[str], int]] = {
    "leaser_scale": ([], ["--quick"], 900),
    "worker_throughput": (["--reps", "3"], ["--records", "4000", "--reps", "1"], 900),
    "handoff_pause": (["--reps", "2"], ["--reps", "1", "--steady", "4"], 1200),
    "discovery_cost": (["--also-unthrottled", "50"],
                       ["--shards", "500", "--workers", "1,5", "--window", "20", "--shard-sync-interval", "10"], 2400),
    "idle_cost": (["--configs", "default,baseline,wakes,budget"],
                  ["--configs", "default,baseline,wakes,budget", "--window", "15", "--warmup", "10", "--quiet-after",
                   "3"],
                  600),
    "latency": ([], ["--seconds", "10", "--shards", "8", "--quiet-samples", "16", "--quiet-after", "5"], 1200),
    "redis_cost": ([], ["--window", "8", "--intervals", "0,5"], 600),
    "memory": ([], ["--shards", "300", "--seconds", "10"], 900),
    "async_handlers": ([], ["--reps", "1", "--records", "3200"], 900),
    "processes": ([], ["--reps", "1", "--records", "4000"], 900),
    "call_cpu": ([], ["--shards", "50", "--window", "10", "--warmup", "5"], 600),
    "call_instructions": ([], ["--calls", "200"], 1800),
}

KCL_FAILOVER_S = 10.0
KCL_TAKE_INTERVAL_S = 20.0
KCL_RENEW_S = 10.0 / 3
LAMBDA_POLLS_PER_MIN = 240
TAKEOVER_TARGET_S = 8.0
IDLE_TARGET_PER_MIN = 15.0
QUIET_TARGET_P50_S, QUIET_TARGET_P99_S = 3.0, 5.0
THROUGHPUT_TARGET_X = 4.0
DESCRIBE_LIMIT_PER_S = 10


def run_benches(names: list[str], quick: bool, results: Path) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {}
    for name in names:
        full, fast, timeout = BENCHES[name]
        args = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *(fast if quick else full),
                "--json", str(results / f"{name}.json")]
        print(f"== {name}: {' '.join(args[1:])}", flush=True)
        t0 = time.time()
        with open(results / f"{name}.log", "wb") as log:
            try:
                rc = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        status[name] = {"rc": rc, "seconds": round(time.time() - t0, 1),
                        "command": "bench/" + " ".join([f"{name}.py", *(fast if quick else full)])}
        print(f"   rc {rc} in {status[name]['seconds']:.0f} s; log {results / f'{name}.log'}", flush=True)
    return status


def load(results: Path, name: str) -> Any:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- plots -------------------------------------------------------------------------------------


def plots(data: dict[str, Any], img: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    made.update(processes_bench.plot(data.get("processes"), img))
    colors = {"w1": "tab:red", "w2": "tab:blue", "w3": "tab:green"}
    titles = {"term": "SIGTERM 1 of 3 workers", "kill": "SIGKILL 1 of 3 workers", "join": "3rd worker joins 2"}

    handoff = data.get("handoff_pause")
    if handoff:
        runs = {k: next((r for r in handoff if r["scenario"] == k and r.get("batches")), None) for k in titles}
        runs = {k: r for k, r in runs.items() if r}
        if runs:
            fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), sharex=True, squeeze=False)
            for ax, (kind, r) in zip(axes[:, 0], runs.items(), strict=True):
                shards = sorted({b["shard"] for b in r["batches"]})
                moved = {m["shard"] for m in r["moved"]}
                for i, shard in enumerate(shards):
                    for w in sorted({b["w"] for b in r["batches"]}):
                        ts = [b["t"] - r["t_event"] for b in r["batches"] if b["shard"] == shard and b["w"] == w
                              and -6 <= b["t"] - r["t_event"] <= 10]
                        ax.scatter(ts, [i] * len(ts), s=6, color=colors.get(w, "gray"),
                                   label=w if i == 0 or w not in ax.get_legend_handles_labels()[1] else None)
                ax.set_yticks(range(len(shards)))
                ax.set_yticklabels([("* " if s in moved else "") + s[-8:] for s in shards], fontsize=7)
                ax.axvline(0, color="black", lw=1)
                if kind == "kill":
                    ax.axvspan(0, 5, color="gray", alpha=0.12, label="lease TTL 5 s")
                ax.set_title(f"{titles[kind]} at t=0: handled batches per shard (* = shard moved)", fontsize=9)
                handles, labels = ax.get_legend_handles_labels()
                uniq = dict(zip(labels, handles, strict=False))
                ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            axes[-1, 0].set_xlabel("seconds from the event (handler wall time)")
            fig.tight_layout()
            fig.savefig(img / "handoff_pause_timeline.png", dpi=110)
            plt.close(fig)
            made["pause"] = "img/handoff_pause_timeline.png"

            fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), sharey=True, squeeze=False)
            for ax, (kind, r) in zip(axes[0], runs.items(), strict=True):
                moved = {m["shard"] for m in r["moved"]}
                first: dict[tuple[str, float], float] = {}
                for b in sorted(r["batches"], key=lambda b: b["t"]):
                    for wt in b["wts"]:
                        first.setdefault((b["shard"], wt), b["t"])
                for shard in sorted({k[0] for k in first}):
                    pts = sorted((wt - r["t_event"], t - wt) for (s, wt), t in first.items()
                                 if s == shard and -6 <= wt - r["t_event"] <= 10)
                    if shard in moved:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label="moved " + shard[-4:])
                    else:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.5, color="gray", alpha=0.5,
                                label="other shards" if "other shards" not in ax.get_legend_handles_labels()[1]
                                else None)
                ax.axvline(0, color="black", lw=1)
                ax.set_title(titles[kind], fontsize=9)
                ax.set_xlabel("write time, s from the event")
                ax.set_yscale("log")
                ax.legend(fontsize=6)
            axes[0, 0].set_ylabel("write -> handler latency (s, log)")
            fig.suptitle("Lag per record around a membership change (6 shards x 20 records/s, default settings)",
                         fontsize=9)
            fig.tight_layout()
            fig.savefig(img / "rebalance_lag.png", dpi=110)
            plt.close(fig)
            made["lag"] = "img/rebalance_lag.png"

    disc = data.get("discovery_cost")
    if disc and disc.get("points"):
        fig, ax = plt.subplots(figsize=(8, 3.4))
        for p in disc["points"]:
            ts = sorted(p["call_times"])
            lim = p.get("describe_limit_per_s")
            ax.step(ts, range(1, len(ts) + 1), where="post",
                    label=f"{p['workers']} worker(s), " + (f"throttle {lim:g}/s" if lim else "no throttle")
                    + (f", {len(p['workers_exited'])} exited" if p.get("workers_exited") else ""))
        ax.set_xlabel("seconds from the first worker's Popen")
        ax.set_ylabel("DescribeStream calls (cumulative)")
        p0 = disc["points"][0]
        ax.set_title(f"DescribeStream calls, {p0['shards']:,} shards, shard sync every "
                     f"{p0['shard_sync_interval_s']:g} s (counted server-side)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / "discovery_calls.png", dpi=110)
        plt.close(fig)
        made["discovery"] = "img/discovery_calls.png"

    idle = data.get("idle_cost")
    if idle and idle.get("points"):
        fig, ax = plt.subplots(figsize=(6, 2.8))
        labels = [f"shardlease {p.get('config', '')}, idle poll {p['idle_poll_interval_s']:g} s"
                  for p in idle["points"]]
        values = [p["per_shard_per_min_median"] for p in idle["points"]]
        labels.append("Lambda (4 polls/s)")
        values.append(LAMBDA_POLLS_PER_MIN)
        ax.barh(labels, values, color=["tab:blue"] * (len(values) - 1) + ["tab:orange"])
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
        ax.set_xlabel("GetRecords calls per idle shard per minute")
        ax.set_xlim(0, max(values) * 1.15)
        fig.tight_layout()
        fig.savefig(img / "idle_polls.png", dpi=110)
        plt.close(fig)
        made["idle"] = "img/idle_polls.png"

    trade = idle_latency_points(data)
    if trade:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        ax.axvspan(0, IDLE_TARGET_PER_MIN, ymax=QUIET_TARGET_P99_S / 6.0, color="tab:green", alpha=0.08,
                   label=f"target: <= {IDLE_TARGET_PER_MIN:g} calls/min, p50 <= {QUIET_TARGET_P50_S:g} s, "
                         f"p99 <= {QUIET_TARGET_P99_S:g} s")
        for name, calls, p50, p99 in trade:
            ax.errorbar([calls], [p50], yerr=[[0], [p99 - p50]], fmt="o", capsize=4,
                        label=f"{name}: p50 {p50:.2f} s, p99 {p99:.2f} s, {calls:.0f} calls/min")
        ax.set_xlabel("GetRecords calls per quiet shard per minute (bench/idle_cost.py)")
        ax.set_ylabel("first record after quiet:\nwrite -> handler (s)")
        ax.set_xlim(0, max(c for _, c, _, _ in trade) * 1.2)
        ax.set_ylim(0, 6.0)
        ax.set_title("Idle cost vs first-record latency (dot p50, bar to p99)", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "idle_cost_vs_latency.png", dpi=110)
        plt.close(fig)
        made["idle_trade"] = "img/idle_cost_vs_latency.png"

    lat = data.get("latency")
    if lat and lat.get("phases"):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for ph in lat["phases"]:
            vals = sorted(s[1] * 1000 for s in ph["samples"])
            ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))],
                    label=f"{ph['phase']} ({ph['rate_per_shard']:g} records/s per shard)")
        ax.set_xscale("log")
        ax.set_xlabel("write -> handler latency (ms, log)")
        ax.set_ylabel("fraction of records")
        ax.set_title("End-to-end latency at default settings (1 worker)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "latency_cdf.png", dpi=110)
        plt.close(fig)
        made["latency"] = "img/latency_cdf.png"

    mem = data.get("memory")
    if mem and mem.get("timeline"):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        tl = mem["timeline"]
        ax.plot([r[0] for r in tl], [r[1] for r in tl], color="tab:blue", label="RSS (MB)")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(0, max(r[1] for r in tl) * 1.2)
        ax2 = ax.twinx()
        ax2.plot([r[0] for r in tl], [r[2] for r in tl], color="tab:red", alpha=0.6, label="CPU (% of one core)")
        ax2.set_ylabel("CPU (% of one core)")
        ax2.set_ylim(0, 210)
        ph = mem["phases_s"]
        ax.axvspan(*ph["idle"], color="gray", alpha=0.12)
        ax.axvspan(*ph["traffic"], color="tab:green", alpha=0.12)
        ax.set_xlabel(f"seconds from Popen (grey: idle window, green: {mem['rate']:g} records/s)")
        ax.set_title(f"One worker holding {mem['shards']:,} shards (default settings)", fontsize=9)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(img / "memory_1000_shards.png", dpi=110)
        plt.close(fig)
        made["memory"] = "img/memory_1000_shards.png"
    return made


def idle_latency_points(data: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(configuration, GetRecords per quiet shard per minute, first-record p50 s, p99 s) of each configuration
    measured by both idle_cost and latency (issue 16, goal 1)."""
    idle, lat = data.get("idle_cost") or {}, data.get("latency") or {}
    calls = {p["config"]: p["per_shard_per_min_median"] for p in idle.get("points", []) if "config" in p}
    out = []
    for name, c in (lat.get("configs") or {}).items():
        quiet = next((ph for ph in c["phases"] if ph["phase"] == "quiet"), None)
        if quiet and name in calls:
            out.append((name, calls[name], quiet["p50_ms"] / 1000, quiet["p99_ms"] / 1000))
    return out


def add_quiet_headline(add: Any, lat: dict[str, Any], ph: dict[str, Any]) -> None:
    base = next((b for b in (lat.get("configs", {}).get("baseline") or {}).get("phases", [])
                 if b["phase"] == "quiet"), None)
    ok = ph["p50_ms"] <= QUIET_TARGET_P50_S * 1000 and ph["p99_ms"] <= QUIET_TARGET_P99_S * 1000
    add(f"| First record on a long-quiet shard, write -> handler (default) | p50 {ph['p50_ms']:.0f} ms, "
        f"p99 {ph['p99_ms']:.0f} ms"
        + (f" (baseline: p50 {base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms)" if base else "")
        + f" | target p50 ≤ {QUIET_TARGET_P50_S * 1000:.0f} ms, p99 ≤ {QUIET_TARGET_P99_S * 1000:.0f} ms "
        f"| {verdict(ok)} |")


def add_idle_and_redis_cost(add: Any, data: dict[str, Any], made: dict[str, str]) -> None:
    """Issue 16 goals 1 (idle cost vs first-record latency) and 5 (Redis cost per busy shard)."""
    ic, lat, rc = data.get("idle_cost"), data.get("latency"), data.get("redis_cost")
    if ic and ic.get("points"):
        add("## Idle cost (`bench/idle_cost.py`)")
        add("")
        p = ic["points"][0]
        add(f"One worker process per configuration, side by side in one run, each holding {p['shards']} shards that "
            f"never receive a record; GetRecords counted server-side per shard over {p['window_s']:.0f} s after a "
            f"{p.get('warmup_s', 0):.0f} s warm-up (the shards quiet for longer than `--quiet-after` "
            f"{ic.get('quiet_after_s', 60):g} s). **default** = default settings (a quiet shard is polled every "
            "`--idle-poll-interval` 4 s); **baseline** = `--idle-poll-interval 1`, the fixed 1 s poll of earlier "
            "versions; **wakes** = default settings while wakes keep coming (half the shards get a record in turn, one "
            "every 2.5 s, each waking the worker's other quiet shards; counted on the other half); **budget** = a "
            "fleet-wide GetRecords budget (`--max-getrecords-per-second`) below one call per shard per idle interval: "
            "every shard's interval stretches so that the worker, here the whole fleet, keeps to it. "
            f"Target (issue 16): at most {IDLE_TARGET_PER_MIN:g} calls per quiet shard per minute.")
        add("")
        add("| configuration | GetRecords per shard per minute (median, min-max) | target | GetRecords/s in all | "
            "GetShardIterator | worker CPU (% of one core) | Lambda |")
        add("|---|---|---|---|---|---|---|")
        for p in ic["points"]:
            flags = " ".join(f"`--{k} {v}`" for k, v in p.get("flags", {}).items()) or "defaults"
            add(f"| {p.get('config', '')} ({flags}) | {p['per_shard_per_min_median']:.1f} "
                f"({p['per_shard_per_min_min']:.1f}-{p['per_shard_per_min_max']:.1f}) | "
                + (f"<= {IDLE_TARGET_PER_MIN:g} {verdict(p['per_shard_per_min_median'] <= IDLE_TARGET_PER_MIN)}"
                   if p.get("config", "default") in ("default", "wakes") else "-")
                + (f" | {p['calls_per_s']:.2f}" + (f" (budget {p['flags']['max-getrecords-per-second']})"
                                                    if "max-getrecords-per-second" in p.get("flags", {}) else "")
                   if "calls_per_s" in p else " | -")
                + f" | {p['get_shard_iterator_calls']} | "
                f"{f(p['worker_cpu_pct_mean'], 1)} | {LAMBDA_POLLS_PER_MIN} |")
        add("")
        add("The price is the first record on a long-quiet shard: it waits for that shard's next poll, up to the "
            "ceiling (on average half of it, see the latency section). `--idle-poll-interval` trades it back "
            "(`1` restores the old fixed poll); `--quiet-after` sets how long a shard stays on the active 1 s poll "
            "after its last record. Records on one quiet shard wake the worker's other quiet shards.")
        add("")
        if "idle_trade" in made:
            add(f"![idle cost vs first-record latency]({made['idle_trade']})")
            add("")
        if "idle" in made:
            add(f"![GetRecords per idle shard per minute]({made['idle']})")
            add("")
    if lat and lat.get("configs"):
        add("## End-to-end latency (`bench/latency.py`)")
        add("")
        ph0 = lat["phases"][0]
        add(f"One worker process per configuration (default; baseline = `--idle-poll-interval 1`), side by side, "
            f"{ph0['shards']} shards each, the same writes into both tables at the same time; latency = handler wall "
            "time - write time (same host clock; AWS's own delay from the table write to the stream record is not "
            f"included). **quiet**: single records, each on a shard quiet for longer than `--quiet-after` "
            f"{lat.get('quiet_after_s', 60):g} s, at random times. Target (issue 16) for the default's quiet phase: "
            f"p50 <= {QUIET_TARGET_P50_S:g} s, p99 <= {QUIET_TARGET_P99_S:g} s; busy and sparse unchanged from the "
            "baseline.")
        add("")
        add("| configuration | traffic | records | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
        add("|---|---|---|---|---|---|---|")
        for name, c in lat["configs"].items():
            for ph in c["phases"]:
                traffic = (f"{ph['phase']}: {ph['rate_per_shard']:g} records/s per shard" if ph["phase"] != "quiet"
                           else "quiet: first record on a long-quiet shard")
                add(f"| {name} | {traffic} | {ph['records']:,} | {ph['p50_ms']:.0f} | {ph['p90_ms']:.0f} | "
                    f"{ph['p99_ms']:.0f} | {ph['max_ms']:.0f} |")
        add("")
        add("Busy shards are re-polled at once after a non-empty page and 0.1-0.2 s after an empty one; a shard with "
            "records within the last minute waits at most the active interval (1 s) for its next poll, as before. A "
            "quiet shard waits up to the 4 s ceiling: a lone record landing at a random time waits half of it on "
            "average (p50 about 2 s, p99 about 4 s). The quiet phase's records follow each other every 4-6 s on "
            "different shards, and each one read wakes the worker's other quiet shards (those whose next poll is "
            "at most 2 s away are polled at once; the poll after stays on their own 4 s grid), which shortens the "
            "next record's wait: bursts spread over shards see the same. Lambda's 4 polls/s "
            "bound the wait at 0.25 s.")
        add("")
        if "latency" in made:
            add(f"![latency distribution]({made['latency']})")
            add("")
    if rc and rc.get("points"):
        add("## Redis cost per busy shard (`bench/redis_cost.py`)")
        add("")
        p0 = rc["points"][0]
        add(f"One worker process per `--checkpoint-interval`, side by side, each with its own redis-server and "
            f"{p0['shards']} shards written at {p0['rate_per_shard']:g} records/s each for {p0['window_s']:.0f} s. "
            "Commands = Redis `total_commands_processed` (every command a Lua script runs counts); per busy shard = "
            "(busy - idle) / shards. Then each worker is SIGKILLed with the writers running and a replacement "
            "takes over: records handled twice (what the killed worker handled after its last checkpoint) and "
            "never handled.")
        add("")
        add("| `--checkpoint-interval` | Redis commands/s idle | busy | per busy shard | scripts (EVALSHA)/s per busy "
            "shard | batches/s per busy shard | SIGKILL: duplicates (bound) | missing |")
        add("|---|---|---|---|---|---|---|---|")
        for p in rc["points"]:
            add(f"| {p['checkpoint_interval_s']:g} s | {p['idle_commands_per_s']:.0f} | "
                f"{p['busy_commands_per_s']:.0f} | {p['commands_per_busy_shard_per_s']:.1f} | "
                f"{p['scripts_per_busy_shard_per_s']:.2f} | "
                f"{p['batches_per_busy_shard_per_s']:.2f} | {p['crash_duplicates']} ({p['duplicate_bound']}) | "
                f"{p['crash_missing']} |")
        add("")
        add("A checkpoint per batch (the default, 0) writes one fenced checkpoint script per batch and shard. "
            "`--checkpoint-interval S` writes at most one per shard per S seconds, and always before a handoff or "
            "shutdown releases the lease and at shard end (SHARD_END); a crash or a lost lease re-delivers what was "
            "handled since the last write: at most S seconds of the shard's records (plus the batch in flight).")
        add("")


# -- the report --------------------------------------------------------------------------------


def f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def med(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def handoff_stats(handoff: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rs = [r for r in handoff if r["scenario"] == kind]
    moved = [m for r in rs for m in r["moved"]]
    if not moved:
        return {}
    out = {
        "reps": len(rs), "moved": len(moved),
        "pause_med": med([m["pause_s"] for m in moved]), "pause_max": max(m["pause_s"] for m in moved),
        "data_med": med([m["data_pause_s"] for m in moved]), "data_max": max(m["data_pause_s"] for m in moved),
        "new_owner_med": med([m["event_to_new_owner_s"] for m in moved]),
        "new_owner_max": max(m["event_to_new_owner_s"] for m in moved),
        "steady_latency_med": med([m["steady_latency_s"] for m in moved]),
        "duplicates": sum(r["duplicates"] for r in rs), "missing": sum(r["missing"] for r in rs),
        "balanced_med": med([r["event_to_balanced_s"] for r in rs]),
    }
    if kind == "join":
        out["fair_med"] = med([r["join_fair_share_s"] for r in rs])
    return out


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def build_markdown(data: dict[str, Any], status: dict[str, Any], made: dict[str, str], info: dict[str, Any],
                   quick: bool, results: Path, load_end: float | None) -> str:
    L: list[str] = []
    add = L.append
    add("# Benchmarks")
    add("")
    add("<!-- Generated by `python bench/report.py`; do not edit by hand. -->")
    add("")
    add("Regenerate everything (all benchmarks, this page and the plots in `docs/img/`) with one command from the "
        "repository root, about 15-20 minutes on 2 cores:")
    add("")
    add("```console")
    add(".venv/bin/python bench/report.py            # full run")
    add(".venv/bin/python bench/report.py --quick    # smoke run, ~3 min, smaller sizes")
    add(".venv/bin/python bench/report.py --from-results DIR   # rebuild from a previous run's JSON")
    add("```")
    add("")
    if quick:
        add("> **This is a `--quick` run**: smaller sizes and shorter windows than described below; do not quote "
            "these numbers.")
        add("")
    add(f"Measured {info['date']} on commit `{info['commit']}`: {info['cpus']} cores ({info['cpu_model']}), "
        f"{info['mem_gb']} GB RAM, Python {info['python']}, redis-server {info['redis']}, {info['platform']}"
        + (f" ({info['rerun']})" if info.get("rerun") else "") + ". "
        f"**The machine was shared**: other sessions ran test suites on the same 2 cores during the run "
        f"(1-minute load average {info['loadavg_1m']:.1f} at the start"
        + (f", {load_end:.1f} at the end" if load_end is not None else "") + "), so wall-clock numbers carry noise; "
        "where a benchmark repeats, medians are shown. Every benchmark uses its own `redis-server` on a free "
        "port (never 6379) and the local DynamoDB Streams endpoint (`worker.local`) in the benchmark process; "
        "worker processes are real `python -m worker run` processes unless stated otherwise.")
    add("")

    ls = data.get("leaser_scale")
    tp = data.get("worker_throughput")
    ho = data.get("handoff_pause")
    dc = data.get("discovery_cost")
    ic = data.get("idle_cost")
    lat = data.get("latency")
    mem = data.get("memory")

    # ---- headline
    add("## Headline")
    add("")
    add("| What | Measured | Anchor / target | Verdict |")
    add("|---|---|---|---|")
    kill = handoff_stats(ho, "kill") if ho else {}
    term = handoff_stats(ho, "term") if ho else {}
    join = handoff_stats(ho, "join") if ho else {}
    if kill:
        add(f"| Takeover after a crash (SIGKILL 1 of 3 workers, default lease TTL 5 s): first batch of the new "
            f"owner after the kill | median {kill['new_owner_med']:.2f} s, max {kill['new_owner_max']:.2f} s "
            f"({kill['moved']} moved shards) | target ≤ {TAKEOVER_TARGET_S:g} s; KCL: {KCL_FAILOVER_S:g} s lease "
            f"failover + take every {KCL_TAKE_INTERVAL_S:g} s (users report 27-40 s gaps on deploys) | "
            f"{verdict(kill['new_owner_max'] <= TAKEOVER_TARGET_S)} |")
    if term:
        add(f"| Planned restart (SIGTERM 1 of 3): processing pause per moved shard | median {term['pause_med']:.2f} s, "
            f"max {term['pause_max']:.2f} s; duplicates {term['duplicates']} | KCL 3 graceful handoff, 30 s timeout "
            f"| - |")
    if join:
        add(f"| A worker joins: pause per moved shard / newcomer holds its fair share | {join['pause_med']:.2f} s "
            f"median / {join['fair_med']:.2f} s after Popen | KCL: one lease stolen per {KCL_TAKE_INTERVAL_S:g} s "
            f"take interval | - |")
    if tp:
        reps = tp["reps"]
        plain = med([r["plain"]["wall_s"] for r in reps])
        wall = med([r["worker"]["wall_s"] for r in reps])
        steady = med([r["worker"]["steady_s"] for r in reps])
        add(f"| Throughput, one worker process vs the plain boto3 loop ({tp['records']:,} records, {tp['shards']} "
            f"shards) | {plain / wall:.1f}x from Popen, {plain / steady:.1f}x steady ({tp['records'] / steady:,.0f} "
            f"records/s) | target ≥ {THROUGHPUT_TARGET_X:g}x | "
            f"{verdict(plain / wall >= THROUGHPUT_TARGET_X)} from Popen, "
            f"{verdict(plain / steady >= THROUGHPUT_TARGET_X)} steady |")
    add_cost_headline(add, data)
    if dc and dc.get("points"):
        pts = dc["points"]
        steady = ", ".join(f"{p['workers']}{'' if p.get('describe_limit_per_s') else ' (no throttle)'}: "
                           f"{p['steady_calls_per_min']:.1f}" for p in pts)
        grows = any(len(p["leaders"]) != 1 for p in pts) or (
            max(p["steady_calls"] for p in pts) > min(p["steady_calls"] for p in pts) + 1)
        add(f"| DescribeStream calls per minute, {pts[0]['shards']:,} shards (workers: calls/min over "
            f"{pts[0]['window_s']:.0f} s after start-up) | {steady} | must not grow with workers; AWS limit "
            f"{DESCRIBE_LIMIT_PER_S}/s per account | {verdict(not grows)} |")
        throttled_pts = [p for p in pts if p.get("describe_limit_per_s")]
        if throttled_pts:
            big = max(throttled_pts, key=lambda p: p["workers"])
            exited = len(big.get("workers_exited") or {})
            add(f"| Fleet start-up under a {DESCRIBE_LIMIT_PER_S}/s DescribeStream throttle: {big['workers']} workers "
                f"started together | {exited} of {big['workers']} exited at start-up; peak {big['peak_calls_in_1s']} "
                f"calls in 1 s, {big['throttled']} throttled | every worker starts | {verdict(exited == 0)} |")
    if ic and ic.get("points"):
        by = {p.get("config", ""): p for p in ic["points"]}
        p = by.get("default", ic["points"][0])
        base = by.get("baseline")
        add(f"| GetRecords per quiet shard per minute (default: `--idle-poll-interval` {p['idle_poll_interval_s']:g} s "
            f"after 60 s quiet) | {p['per_shard_per_min_median']:.1f}"
            + (f" (baseline, fixed 1 s poll: {base['per_shard_per_min_median']:.1f})" if base else "")
            + f" | target ≤ {IDLE_TARGET_PER_MIN:g}; Lambda: {LAMBDA_POLLS_PER_MIN} (4 polls/s) | "
            f"{verdict(p['per_shard_per_min_median'] <= IDLE_TARGET_PER_MIN)} |")
    if lat and lat.get("phases"):
        for ph in lat["phases"]:
            if ph["phase"] == "quiet":
                add_quiet_headline(add, lat, ph)
                continue
            add(f"| Write -> handler latency, {ph['phase']} ({ph['rate_per_shard']:g} records/s per shard) | "
                f"p50 {ph['p50_ms']:.0f} ms, p99 {ph['p99_ms']:.0f} ms | Lambda: polls 4/s per shard | - |")
    rcost = data.get("redis_cost")
    if rcost and rcost.get("points"):
        pts = rcost["points"]
        add(f"| Redis commands/s per busy shard ({pts[0]['rate_per_shard']:g} records/s per shard), by "
            "`--checkpoint-interval` | " + ", ".join(f"{p['checkpoint_interval_s']:g} s: "
                                                      f"{p['commands_per_busy_shard_per_s']:.1f}" for p in pts)
            + " | 0 s (a checkpoint per batch) is the baseline | - |")
    if mem and mem.get("idle"):
        add(f"| Memory of one worker holding {mem['shards']:,} shards | RSS {mem['idle']['rss_mb_max']:.0f} MB idle, "
            f"{mem['traffic']['rss_mb_max']:.0f} MB with {mem['rate']:g} records/s | - | - |")
    if ls:
        big = ls["scenarios"][-1]
        iv = ls["config"]["renew_interval"]
        add(f"| Coordination, {big['shards']:,} shards x {big['workers']} simulated workers on one Redis: Redis "
            f"commands/s and CPU (renew interval {iv:g} s) | {big['steady']['redis_total_commands_per_s']:,.0f}/s, "
            f"{big['steady']['redis_cpu_pct_of_one_core']:.0f}% of one core; 1 round trip per worker per interval | "
            f"KCL: every worker scans the whole lease table every {KCL_TAKE_INTERVAL_S:g} s | - |")
    add("")
    failed = {k: v for k, v in status.items() if v.get("rc") not in (0, None)}
    if failed:
        add("**Benchmarks that failed in this run** (their sections are missing or partial): " + ", ".join(
            f"`{k}` (rc {v['rc']})" for k, v in failed.items()))
        add("")

    # ---- sections
    if ls:
        cfg = ls["config"]
        iv = cfg["renew_interval"]
        add("## Coordination at scale (`bench/leaser_scale.py`)")
        add("")
        add(f"Simulated workers (`LeaseManager` objects in one process, {cfg['threads']} threads) on a real "
            f"redis-server. The renew interval is **compressed** to {iv:g} s (lease TTL {cfg['lease_ttl']:g} s) so "
            f"the run is short: read per-interval numbers; at the default 1.5 s interval, per-second Redis load "
            f"scales by {iv:g} / 1.5 and convergence times by 1.5 / {iv:g} (crash: the default 5 s TTL instead).")
        add("")
        cols = ls["scenarios"]
        add("| | " + " | ".join(f"{s['shards']:,} x {s['workers']}" for s in cols) + " |")
        add("|---|" + "---|" * len(cols))

        def row(label: str, fn: Any) -> None:
            cells = []
            for s in cols:
                try:
                    cells.append(fn(s))
                except (KeyError, TypeError, ZeroDivisionError):
                    cells.append("-")
            add(f"| {label} | " + " | ".join(cells) + " |")

        def conv(c: dict[str, Any]) -> str:
            if c.get("seconds") is None:
                return "timed out"
            return f"{c['seconds']:.2f} s = {c['renew_intervals']:.1f} intervals"

        row("cold start: every lease held, max-min ≤ 1", lambda s: conv(s["cold_start"]))
        row("steady: Redis commands/s (inside scripts incl.)",
            lambda s: f"{s['steady']['redis_total_commands_per_s']:,.0f}")
        row("steady: same at the default 1.5 s interval",
            lambda s: f"{s['steady']['redis_total_commands_per_s'] * iv / 1.5:,.0f}")
        row("steady: Redis CPU, % of one core", lambda s: f"{s['steady']['redis_cpu_pct_of_one_core']:.1f}")
        row("steady: client round trips per worker per interval",
            lambda s: f"{s['steady']['client_round_trips_per_worker_per_interval']}")
        row("steady: Redis commands per lease per interval",
            lambda s: f"{s['steady']['redis_commands_per_lease_per_interval']}")
        row("steady: bytes out / in per heartbeat",
            lambda s: f"{s['steady']['redis_bytes_out_per_worker_per_interval']:,}"
            f" / {s['steady']['redis_bytes_in_per_worker_per_interval']:,}")
        row("join: time to balance", lambda s: conv(s["join"]))
        row("join: leases moved (ideal)", lambda s: f"{s['join']['moves']} ({s['join']['ideal_moves']})")
        row("crash: time to balance (TTL incl.)", lambda s: conv(s["death"]))
        row("join: estimated at the defaults (intervals x 1.5 s)",
            lambda s: f"~{s['join']['renew_intervals'] * 1.5:.1f} s")
        row(f"crash: estimated at the defaults (5 s TTL + (measured - {cfg['lease_ttl']:g} s) x 1.5 / {iv:g})",
            lambda s: f"~{5 + (s['death']['seconds'] - cfg['lease_ttl']) * 1.5 / iv:.1f} s")
        row("crash: leases moved (ideal)", lambda s: f"{s['death']['moves']} ({s['death']['ideal_moves']})")
        row("every lease owned by a live worker, tokens unique",
            lambda s: f"{s['verify']['all_owned_by_live_workers']}, {s['verify']['tokens_unique']}")
        add("")
        big = cols[-1]
        n_sh, n_w = big["shards"], big["workers"]
        add(f"**Anchor (KCL, computed from its defaults, not measured):** every KCL worker scans the whole lease "
            f"table every take interval ({KCL_TAKE_INTERVAL_S:g} s) and renews each of its leases every "
            f"~{KCL_RENEW_S:.1f} s. For {n_sh:,} shards and {n_w} workers that is {n_sh * n_w:,} lease items read "
            f"per {KCL_TAKE_INTERVAL_S:g} s ({n_sh * n_w / KCL_TAKE_INTERVAL_S:,.0f} items/s) plus "
            f"{n_sh / KCL_RENEW_S:,.0f} conditional writes/s; a joining KCL worker steals at most one lease per take "
            f"interval, so reaching a fair share of {n_sh // n_w} leases takes "
            f"~{n_sh // n_w * KCL_TAKE_INTERVAL_S / 60:.0f} "
            f"minutes, where shardlease's join converges in {big['join']['renew_intervals']:.1f} renew intervals "
            f"moving exactly the newcomer's share. shardlease's steady state is one Lua heartbeat per worker per "
            f"renew interval, which renews only that worker's own leases (about 3 Redis commands per lease inside the "
            f"script), no scan of the group's leases.")
        add("")

    if ho:
        add("## Pause when a lease moves (`bench/handoff_pause.py`)")
        add("")
        add("Three real worker processes (two for join) at DEFAULT settings (lease TTL 5 s, renew 1.5 s), "
            "6 shards x 20 records/s, each record carrying its write time. **pause** = first batch of the new "
            "owner - last batch of the old owner; **data pause** = worst write->handle latency of records written "
            "from 2 s before the event, minus the steady median latency.")
        add("")
        add("| scenario | reps | moved shards | pause median / max (s) | data pause median / max (s) | event -> new "
            "owner median / max (s) | steady latency (s) | duplicates | missing |")
        add("|---|---|---|---|---|---|---|---|---|")
        for kind, label in (("term", "SIGTERM 1 of 3"), ("kill", "SIGKILL 1 of 3"), ("join", "3rd joins 2")):
            s = handoff_stats(ho, kind)
            if s:
                add(f"| {label} | {s['reps']} | {s['moved']} | {s['pause_med']:.2f} / {s['pause_max']:.2f} | "
                    f"{s['data_med']:.2f} / {s['data_max']:.2f} | {s['new_owner_med']:.2f} / {s['new_owner_max']:.2f} "
                    f"| {s['steady_latency_med']:.2f} | {s['duplicates']} | {s['missing']} |")
        add("")
        if kill:
            add(f"After a SIGKILL the dead worker's shards resume {kill['new_owner_med']:.1f} s later (median): the "
                f"5 s lease TTL plus at most one renew interval until a survivor's heartbeat sees the expired lease. "
                f"Target ≤ {TAKEOVER_TARGET_S:g} s: {verdict(kill['new_owner_max'] <= TAKEOVER_TARGET_S)}. KCL's "
                f"equivalent is a {KCL_FAILOVER_S:g} s lease failover plus up to a {KCL_TAKE_INTERVAL_S:g} s take "
                "interval.")
            add("")
        if join:
            add(f"Join: the newcomer holds its fair share {join['fair_med']:.2f} s after its Popen (median), which "
                "includes ~0.5 s of process start-up and one renew interval in which its first heartbeat only joins.")
            add("")
        if "pause" in made:
            add(f"![handled batches per shard around the event]({made['pause']})")
            add("")
            add("Each dot is one handler call (batch) on one shard, coloured by worker; t=0 is the signal (or the "
                "newcomer's Popen). After SIGKILL the moved shards are silent for the lease TTL (grey); after "
                "SIGTERM and on join the handoff is sub-second.")
            add("")
        if "lag" in made:
            add(f"![write to handler latency per record around the event]({made['lag']})")
            add("")
            add("Lag over time during a rebalance: write->handler latency of every record, by write time. Records of "
                "the moved shards written after a SIGKILL wait for the takeover (the latency falls linearly as "
                "later records wait less); SIGTERM and join add at most a few hundred ms.")
            add("")

    if tp:
        reps = tp["reps"]
        add("## Throughput (`bench/worker_throughput.py`)")
        add("")
        add(f"{tp['records']:,} records (~1.4 KB NEW_AND_OLD_IMAGES) over {tp['shards']} shards, median of "
            f"{len(reps)}: (a) the plain boto3 loop (DescribeStream, then per shard TRIM_HORIZON + GetRecords "
            "Limit 1000 + `TypeDeserializer`) in-process, vs (b) one `python -m worker run` process with batch size "
            "1000. Both touch every decoded value.")
        add("")
        add("| | wall s (median) | records/s | vs (a) |")
        add("|---|---|---|---|")
        plain = med([r["plain"]["wall_s"] for r in reps])
        wall = med([r["worker"]["wall_s"] for r in reps])
        steady = med([r["worker"]["steady_s"] for r in reps])
        n = tp["records"]
        add(f"| (a) plain boto3 loop | {plain:.2f} | {n / plain:,.0f} | - |")
        add(f"| (b) worker, from Popen (start-up incl.) | {wall:.2f} | {n / wall:,.0f} | {plain / wall:.1f}x |")
        add(f"| (b) worker, first batch -> last batch | {steady:.2f} | {n / steady:,.0f} | {plain / steady:.1f}x |")
        ceiling = drain_ceiling(tp)
        if ceiling is not None:
            add(f"| (c) ceiling: the worker's imports + its decoder + the handler, no I/O (`bench/drain_ceiling.py`) "
                f"| {ceiling:.2f} | {n / ceiling:,.0f} | {plain / ceiling:.1f}x |")
        cpu_a = med([r["plain"]["cpu_s"] for r in reps])
        cpu_b = med([r["worker"]["worker_cpu_s"] + r["worker"]["bench_cpu_s"] for r in reps])
        add(f"| CPU seconds: (a) bench process incl. server vs (b) worker + server | {cpu_a:.2f} vs {cpu_b:.2f} | | "
            f"{cpu_a / cpu_b:.1f}x |")
        add("")
        add("Per repetition (wall s, (a) / (b) from Popen / (b) steady): " + "; ".join(
            f"{r['plain']['wall_s']:.2f} / {r['worker']['wall_s']:.2f} / {r['worker']['steady_s']:.2f}" for r in reps)
            + f". Target ≥ {THROUGHPUT_TARGET_X:g}x: {verdict(plain / wall >= THROUGHPUT_TARGET_X)} when the "
            f"worker's ~0.5 s start-up is counted, {verdict(plain / steady >= THROUGHPUT_TARGET_X)} in steady state. "
            "The worker is CPU-bound in one process, and the handler's touch work (the same on both sides) dilutes "
            "the ratio. The from-Popen ratio sits close to the target and moves with the machine's load between runs "
            "(the run recorded in `bench/README.md` gave 3.9x): treat it as borderline.")
        add("")

    if dc and dc.get("points"):
        pts = dc["points"]
        p0 = pts[0]
        add("## DescribeStream calls vs number of workers (`bench/discovery_cost.py`)")
        add("")
        add(f"A stream of {p0['shards']:,} idle shards; 1, 10 and 50 real worker processes started together "
            f"(default lease settings and the default `--shard-sync-interval {p0['shard_sync_interval_s']:g}`; "
            f"`--idle-poll-interval {p0['idle_poll_interval_s']:g}` so {p0['shards']:,} idle shards do not saturate "
            "the 2 cores: idle polling does not touch discovery). DescribeStream is counted server-side; the local "
            f"server throttles above {DESCRIBE_LIMIT_PER_S} calls/s per stream like AWS's per-account limit. "
            f"Steady window: {p0['window_s']:.0f} s after every lease is held.")
        add("")
        add("| workers started | throttle | start-up: calls (s until every lease held) | steady: calls in window = "
            "per minute | peak calls in 1 s | throttled | workers that exited | leaders | worker RSS median (MB) |")
        add("|---|---|---|---|---|---|---|---|---|")
        for p in pts:
            lim = p.get("describe_limit_per_s")
            add(f"| {p['workers']} | {f'{lim:g}/s' if lim else 'off'} | "
                f"{p['startup_calls']} ({p['startup_s']:.1f} s) | "
                f"{p['steady_calls']} = {p['steady_calls_per_min']:.2f}/min | {p['peak_calls_in_1s']} | "
                f"{p['throttled']} | {len(p.get('workers_exited') or {})} | {len(p['leaders'])} | "
                f"{f(p['worker_rss_mb_median'], 0)} |")
        add("")
        add(f"Only the leader lists: the steady rate is the same for every fleet size. A full listing of "
            f"{p0['shards']:,} shards is {p0['pages_per_full_listing']} pages (100 shards a page); periodic syncs "
            f"continue from the last known shard (1 page on an unchanged stream) and every 10th is a full listing, "
            f"so the long-run average at the default 60 s interval is "
            f"{p0['expected_longrun_per_min']:.1f} calls/min, independent of the number of workers (the window "
            "above is too short to include a 10th sync). **Start-up grows by one call per worker**: each worker "
            "calls DescribeStream (Limit 1) once at start to check the stream's status, so 50 workers starting "
            f"together burst past {DESCRIBE_LIMIT_PER_S}/s and calls are throttled; each worker retries its check "
            "with backoff and jitter (for up to 60 s) until it gets through, and the leader paces its own listing "
            "to 5 calls/s.")
        add("")
        dead = [p for p in pts if p.get("workers_exited")]
        if dead:
            add("**Workers exit when their start-up DescribeStream is throttled.** " + "; ".join(
                f"{len(p['workers_exited'])} of {p['workers']} workers (throttle {p['describe_limit_per_s']:g}/s)"
                for p in dead) + " exited with code 2 right after start, their whole log being `shardlease: error: "
                "DescribeStream: LimitExceededException: Rate exceeded for DescribeStream`. The check that the stream "
                "exists and is enabled (`worker/runtime.py` `resolve_stream` -> `StreamsClient.stream_status`, one "
                "DescribeStream with Limit 1 per worker) gets only botocore's 3 attempts (standard retry mode, "
                "`max_attempts=3` in `worker/reading/streams.py`) and no retry loop of its own, unlike the "
                "leader's sync loop. On AWS the 10/s budget is shared by the whole account and region, "
                "so a deployment that starts many pods at once (or restarts them all) can lose pods to this; "
                "Kubernetes would restart them, with a crash-loop back-off. The surviving workers took over every "
                "shard, and the steady rate is unaffected." + (
                    " The run without the throttle, where every worker stays up, gives the same steady rate."
                    if any(not p.get("describe_limit_per_s") for p in pts) else ""))
            add("")
        one = next((p for p in pts if p["workers"] == 1), None)
        if one and one.get("throttled"):
            add(f"Even a single worker's first full listing ({one['pages_per_full_listing']} pages back to back) "
                f"exceeds {DESCRIBE_LIMIT_PER_S} calls/s (peak {one['peak_calls_in_1s']} in 1 s, "
                f"{one['throttled']} throttled): the sync loop paces itself only through throttling and its backoff.")
            add("")
        if "discovery" in made:
            add(f"![cumulative DescribeStream calls]({made['discovery']})")
            add("")

    if lat and lat.get("phases") and not lat.get("configs"):  # a result from before the side-by-side run
        add("## End-to-end latency (`bench/latency.py`)")
        add("")
        add("| traffic | records | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
        add("|---|---|---|---|---|---|")
        for ph in lat["phases"]:
            add(f"| {ph['phase']}: {ph['rate_per_shard']:g} records/s per shard | {ph['records']:,} | "
                f"{ph['p50_ms']:.0f} | {ph['p90_ms']:.0f} | {ph['p99_ms']:.0f} | {ph['max_ms']:.0f} |")
        add("")
    add_idle_and_redis_cost(add, data, made)

    if mem and mem.get("idle"):
        add("## Memory of one worker holding many shards (`bench/memory.py`)")
        add("")
        add(f"One worker process, default settings (32 shard threads; the idle poll backs off to 4 s after 60 s "
            f"quiet, docs/benchmarks.md \"Idle cost\"), {mem['shards']:,} shards; RSS "
            "sampled with psutil every second.")
        add("")
        add("| phase | RSS (MB) | worker CPU (% of one core) | GetRecords/s (server-side) | "
            "local server process CPU (%) |")
        add("|---|---|---|---|---|")
        if lat and lat.get("worker_rss_mb_max"):
            add(f"| for comparison: the latency benchmark's worker holding {lat['phases'][0]['shards']} shards | "
                f"{lat['worker_rss_mb_max']:.0f} | {f(lat.get('worker_cpu_pct_mean'), 0)} | | |")
        add(f"| first sample, 1 s after Popen | {f(mem['start_rss_mb'], 0)} | | | |")
        add(f"| idle, every lease held (held {mem['all_held_after_s']:.1f} s after Popen) | "
            f"{mem['idle']['rss_mb_max']:.0f} | {mem['idle']['cpu_pct_mean']:.0f} | "
            f"{mem['idle']['get_records_per_s']:.0f} | {mem['idle']['bench_process_cpu_pct_mean']:.0f} |")
        t = mem["traffic"]
        add(f"| traffic: {t['records_per_s_written']:.0f} records/s on random keys ({t['records']:,} records; drained "
            f"{t['drain_after_writer_s']:.1f} s after the writer stopped) | {t['rss_mb_max']:.0f} | "
            f"{t['cpu_pct_mean']:.0f} | {t['get_records_per_s']:.0f} | {t['bench_process_cpu_pct_mean']:.0f} |")
        add("")
        ms = mem["idle"]["cpu_pct_mean"] * 10 / max(1.0, mem["idle"]["get_records_per_s"])
        add(f"Memory is not the limit (a few MB above a freshly started worker). CPU: {ms:.2f} ms of worker CPU per "
            f"GetRecords call here (worker CPU / server-side call rate), so {mem['shards']:,} idle shards keep one "
            f"worker at {mem['idle']['cpu_pct_mean']:.0f}% of a core (CPU per call: \"CPU per empty GetRecords "
            "call\"; the idle back-off: \"Idle cost\").")
        add("")
        if "memory" in made:
            add(f"![RSS and CPU over time]({made['memory']})")
            add("")

    add_async_handlers(add, data.get("async_handlers"))
    processes_bench.markdown(add, data.get("processes"), made)
    add_cost_goals(add, data.get("call_cpu"), tp, data.get("call_instructions"))

    add("## How each benchmark was run")
    add("")
    add("| benchmark | command | exit | seconds |")
    add("|---|---|---|---|")
    for name, s in status.items():
        add(f"| {name} | `.venv/bin/python {s['command']}` | {s['rc']} | {s['seconds']:.0f} |")
    add("")
    add("Raw JSON and logs of the run that produced this page were written to a temporary directory; rerun "
        "`bench/report.py` to reproduce. Each script can also be run alone (see `bench/README.md`).")
    add("")
    return "\n".join(L)


def add_async_handlers(add: Any, ah: dict[str, Any] | None) -> None:
    """The section of ``bench/async_handlers.py``: async vs sync handler, same run, per I/O time."""
    if not ah:
        return
    a = ah["args"]
    over = ah["call_overhead_us"]
    add("## Async vs sync handlers (`bench/async_handlers.py`)")
    add("")
    add(f"One worker process drains a backlog on {a['shards']} shards, {a['batch_size']} records per batch; each "
        "batch waits on an I/O call: `time.sleep` in a sync handler, `await asyncio.sleep` in an async one (on "
        f"the worker's event loop). Batches/s over the middle 80 % of each drain, median of {a['reps']} runs "
        "each, alternated.")
    add("")
    add("| I/O per batch | records | sync batches/s | async batches/s | async / sync "
        "| most calls in flight, sync / async |")
    add("|---|---|---|---|---|---|")
    for r in ah["by_io"]:
        med, flight = r["median_batches_per_s"], r["max_in_flight"]
        add(f"| {r['io_ms']:g} ms | {r['records']:,} | {med['sync']:.0f} | {med['async']:.0f} | {r['ratio']:.2f} | "
            f"{flight['sync']} / {flight['async']} |")
    add("")
    add("A step thread waits while its shard's coroutine runs; the worker has 32 step threads with a sync handler "
        "and 128 with an async one (a waiting thread costs no CPU), so with long I/O an async handler runs a call "
        "for every shard at once while a sync one runs 32. With short I/O the worker's own CPU (GetRecords, "
        "decoding) is the limit and both run at about the same rate (docs/async-handlers.md). The hop to the "
        f"loop thread and back costs {over['async']:.0f} us per call (a sync call of a handler doing nothing: "
        f"{over['sync']:.1f} us).")
    add("")


CALL_CPU_TARGET_MS = 0.3  # issue 16 goal 2: worker CPU per empty GetRecords call
DRAIN_TARGET_X = 6.0  # issue 16 goal 3: drain vs the seed's plain boto3 loop, from process start


def add_cost_headline(add: Any, data: dict[str, Any]) -> None:
    """Headline rows of issue 16 goals 2 (CPU per empty call), 3 (drain from process start) and 4 (processes)."""
    cc, tp, pr = data.get("call_cpu"), data.get("worker_throughput"), data.get("processes")
    if cc and cc.get("points"):
        pts = cc["points"]
        lean = pts.get("lean", {}).get("cpu_ms_per_call")
        if lean is not None:
            others = ", ".join(f"{name}: {r['cpu_ms_per_call']:.2f} ms" for name, r in pts.items() if name != "lean")
            add(f"| Worker CPU per empty GetRecords call (lean path; {others}) | {lean:.2f} ms | "
                f"target ≤ {CALL_CPU_TARGET_MS:g} ms | {verdict(lean <= CALL_CPU_TARGET_MS)} |")
    if tp and tp.get("reps") and all(r["worker"].get("first_getrecords_s") is not None for r in tp["reps"]):
        reps = tp["reps"]
        plain = med([r["plain"]["wall_s"] for r in reps])
        wall = med([r["worker"]["wall_s"] for r in reps])
        first_get = med([r["worker"]["first_getrecords_s"] for r in reps])
        ceiling = drain_ceiling(tp)
        at_most = "" if ceiling is None else f"; the no-I/O ceiling: {plain / ceiling:.1f}x"
        add(f"| Drain of {tp['records']:,} records, one worker from process start vs the seed's plain boto3 loop "
            f"(start-up to the first GetRecords: {first_get:.2f} s{at_most}) | {plain / wall:.1f}x | "
            f"target ≥ {DRAIN_TARGET_X:g}x | {verdict(plain / wall >= DRAIN_TARGET_X)} |")
    if pr and pr.get("summary"):
        curve = ", ".join(f"{n}: {s['speedup_steady']:.2f}x" for n, s in pr["summary"].items())
        add(f"| Drain rate vs `--processes` (steady, vs 1 process; {pr['cores']} cores, shared) | {curve} | "
            "about N x up to the pod's cores | - |")


def drain_ceiling(tp: dict[str, Any]) -> float | None:
    """Median wall s of ``bench/worker_throughput.py``'s (c), the no-I/O ceiling (None in results from before it)."""
    walls = [r["ceiling"]["wall_s"] for r in tp["reps"] if "ceiling" in r]
    return med(walls) if walls else None


def add_cost_goals(add: Any, cc: dict[str, Any] | None, tp: dict[str, Any] | None,
                   ci: dict[str, Any] | None = None) -> None:
    """Issue 16 goals 2 (``bench/call_cpu.py``, ``bench/call_instructions.py``) and 3
    (``bench/worker_throughput.py``, from process start)."""
    if cc and cc.get("points"):
        pts = cc["points"]
        label = {"plain": "(a) plain boto3 client (a polling loop, own process)",
                 "botocore": "(b) worker, botocore's pipeline (before; `SHARDLEASE_BENCH_GETRECORDS_PATH=botocore`)",
                 "lean": "(c) worker, lean GetRecords path (default)"}
        add("## CPU per empty GetRecords call (`bench/call_cpu.py`)")
        add("")
        add(f"{cc['shards']} idle shards polled every {cc['idle_poll_interval_s']:g} s; process CPU time (user + "
            "system) over the window divided by the GetRecords calls the server counted for that process, "
            "everything the process does included. The three run one after the other in one run.")
        add("")
        add("| | GetRecords/s | CPU % of a core | CPU ms per call | 1,000 idle shards at 1 call/s |")
        add("|---|---|---|---|---|")
        for name, r in pts.items():
            ms = r["cpu_ms_per_call"]
            add(f"| {label.get(name, name)} | {r['calls_per_s']:.0f} | {r['cpu_pct']:.1f} | {ms:.3f} | "
                f"{ms * 100:.0f}% of a core |")
        add("")
        profiled = [(n, r) for n, r in pts.items() if r.get("profile") and r["profile"]["samples"]]
        if profiled:
            add("Where the Python CPU goes: `py-spy --gil` samples of the thread holding the GIL during the window "
                "(share of those samples; what is not sampled is the kernel: sockets, futex wake-ups). Inclusive "
                "share of the frames on the GetRecords path, and the top self costs:")
            add("")
            add("| | GIL samples per 1,000 calls | inclusive | top self |")
            add("|---|---|---|---|")
            for name, r in profiled:
                prof = r["profile"]
                frames = [(fn.split(" (")[0], pct) for fn, pct in prof["inclusive"]
                          if "thread" not in fn and "Thread" not in fn and "<locals>" not in fn]
                incl = "; ".join(f"`{fn}` {pct:g}%" for fn, pct in frames[:8])
                top = "; ".join(f"`{fn.split(' (')[0]}` {pct:g}%" for fn, pct in prof["self"][:6])
                add(f"| {name} | {1000 * prof['samples'] / max(1, r['get_records_calls']):.0f} | {incl} | {top} |")
            add("")
        if ci:
            add(f"Instructions per call, client side only (`StreamsClient.get_records`, valgrind callgrind, "
                f"{ci['calls']:,} calls; repeatable whatever the load): botocore's pipeline "
                f"{ci['botocore']:,.0f}, lean path {ci['lean']:,.0f} ({ci['botocore'] / ci['lean']:.1f}x fewer).")
            add("")
        lean = pts.get("lean", {}).get("cpu_ms_per_call")
        if lean is not None:
            add(f"Target ≤ {CALL_CPU_TARGET_MS:g} ms per call: {verdict(lean <= CALL_CPU_TARGET_MS)} "
                f"({lean:.3f} ms). At one poll per idle shard per second, 1,000 idle shards then cost "
                f"{lean * 100:.0f}% "
                "of a core (the issue's 20% at that rate needs ≤ 0.2 ms; at the idle back-off's lower rates it is a "
                "fraction of that). CPU time still moves with the machine's load (cache and core sharing): compare "
                "the rows of one run, and the instruction counts.")
            add("")
    if tp and tp.get("reps") and all(r["worker"].get("first_getrecords_s") is not None for r in tp["reps"]):
        reps = tp["reps"]
        plain = med([r["plain"]["wall_s"] for r in reps])
        wall = med([r["worker"]["wall_s"] for r in reps])
        first_get = med([r["worker"]["first_getrecords_s"] for r in reps])
        add("## Drain speed from process start (issue 16 goal 3, `bench/worker_throughput.py`)")
        add("")
        steady = med([r["worker"]["steady_s"] for r in reps])
        add(f"{tp['records']:,} records, {tp['shards']} shards, median of {len(reps)}: (a) the plain boto3 loop "
            f"{plain:.2f} s, (b) one worker process from `Popen` {wall:.2f} s: **{plain / wall:.1f}x** (target ≥ "
            f"{DRAIN_TARGET_X:g}x: {verdict(plain / wall >= DRAIN_TARGET_X)}; {plain / steady:.1f}x first batch -> "
            f"last batch). Worker start-up, median: "
            f"`Popen` -> first GetRecords (server-side) {first_get:.2f} s, "
            f"`Popen` -> first handler call {med([r['worker']['startup_s'] for r in reps]):.2f} s.")
        add("")
        ceiling = drain_ceiling(tp)
        if ceiling is not None:
            imports = med([r["ceiling"]["imports_s"] for r in reps])
            work = med([r["ceiling"]["work_s"] for r in reps])
            add(f"(c) The ceiling (`bench/drain_ceiling.py`): one fresh process doing only what no worker can skip: "
                f"the worker's imports ({imports:.2f} s from `Popen`), then its page decoder and the same handler on "
                f"the same GetRecords bodies, captured beforehand ({work:.2f} s); no Redis, HTTP, AWS client or "
                f"threads. {ceiling:.2f} s: **{plain / ceiling:.1f}x** the plain loop. The worker spends "
                f"{wall - ceiling:.2f} s more than that (the AWS client, Redis and the leases, 1,000-record HTTP "
                f"pages, checkpoints, {tp['shards']} shards' consumer threads). Per repetition, (a) / (b) / (c): "
                + "; ".join(
                    f"{r['plain']['wall_s']:.2f} / {r['worker']['wall_s']:.2f} / {r['ceiling']['wall_s']:.2f}"
                    for r in reps if "ceiling" in r) + ".")
            add("")
        add("One worker process is CPU-bound on one core (the GIL) while it drains. Per 1.4 KB NEW_AND_OLD_IMAGES "
            "record: the page decoder (msgspec into untracked structs of the wire shape, then the unmarshaller; "
            "`bench/decode_throughput.py`) and the handler's touch of every value (the same work on both sides) are "
            "most of it; `shardlease run` freezes its start-up heap once started (`gc.freeze`), so the cyclic GC's "
            "full collections during the drain do not walk botocore's models and the modules again and again. "
            "GetRecords' own cost per 1,000-record page is small. `--processes N` (goal 4) is what moves the drain "
            "past one core.")
        add("")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, short windows (~3 min)")
    ap.add_argument("--only", help="comma-separated benchmark names: " + ",".join(BENCHES))
    ap.add_argument("--results", help="directory for the JSON and logs (default: a new temporary directory)")
    ap.add_argument("--from-results", metavar="DIR", help="do not run anything; rebuild from this directory")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.from_results:
        results = Path(args.from_results)
        meta = json.loads((results / "meta.json").read_text())
        info, status, quick, load_end = meta["info"], meta["status"], meta["quick"], meta.get("load_end")
    else:
        results = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="shardlease-report-"))
        results.mkdir(parents=True, exist_ok=True)
        print(f"results and logs in {results}", flush=True)
        info = machine_info()
        quick = args.quick
        status = run_benches(names, quick, results)
        load_end = os.getloadavg()[0]
        old = results / "meta.json"
        if args.only and old.exists():  # a subset rerun into an earlier run's directory: keep the rest
            prev = json.loads(old.read_text())
            status = {**prev["status"], **status}
            info = {**prev["info"], "rerun": f"{', '.join(names)} rerun {info['date']}"}
        (results / "meta.json").write_text(json.dumps({"info": info, "status": status, "quick": quick,
                                                       "load_end": load_end}, indent=2))
    data = {name: load(results, name) for name in BENCHES}
    out = Path(args.out)
    made = plots(data, out.parent / "img")
    out.write_text(build_markdown(data, status, made, info, quick, results, load_end))
    print(f"wrote {out} and {len(made)} plots in {out.parent / 'img'}", flush=True)
    return 0 if all(s["rc"] == 0 for s in status.values()) else 1


__all__ = ["percentile"]

if __name__ == "__main__":
    sys.exit(main())
