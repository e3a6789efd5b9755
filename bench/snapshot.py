"""Snapshot throughput: `shardlease snapshot` with 1, 2 and 4 worker processes vs a plain boto3 parallel Scan.

    .venv/bin/python bench/snapshot.py [--items 20000] [--segments 8] [--reps 2] [--json PATH]

One in-process :class:`worker.local.LocalStreamsServer` holds a table of ``--items`` items (~1.4 KB of
typed JSON each: the images of ``bench/decode_throughput.py``) with a NEW_AND_OLD_IMAGES stream. Per
repetition, in the same run:

(a) baseline, in a separate process (as the workers are; the server's threads live in this one): a boto3
    ``dynamodb`` client, ``--segments`` segments scanned by 4 threads
    (``ConsistentRead=True``, pages of 1,000 items, as the snapshot reads), every item through
    ``TypeDeserializer`` and :func:`bench.bench_handlers.touch`;
(b) N = 1, 2, 4 ``python -m worker snapshot`` processes of a fresh group (``--snapshot-read-units 0``: no
    rate limit, ``--batch-size 1000``) whose handler (:func:`bench.bench_handlers.touch_images`) touches the
    same decoded values. Items/s is measured between the snapshot's start and end as Redis recorded them
    ("steady": process start-up excluded), and from the first ``Popen`` to the last exit ("wall").

Both sides' touch sums must agree (every item handed over once). The ratio (b)/(a) is the result; the
local server runs in this process and shares the machine's cores with the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import orjson
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_handlers import touch  # noqa: E402
from bench.decode_throughput import _image  # noqa: E402
from leaser import connect  # noqa: E402
from leaser.embedded import RedisServer  # noqa: E402
from leaser.snapshot import SnapshotStore  # noqa: E402
from worker.local import LocalStreamsServer  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def build_table(server: LocalStreamsServer, items: int) -> Any:
    table = server.create_table("snap", shards=2, stream_enabled=False)
    rng = random.Random(11)
    for i in range(items):
        table.put_item(_image(rng, i, 1), typed=True)
    server.model.enable_stream(table, "NEW_AND_OLD_IMAGES")
    return table


def baseline(url: str, segments: int) -> tuple[float, int, int]:
    """(seconds, items, touch sum) of a plain boto3 parallel Scan with TypeDeserializer."""
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1", aws_access_key_id="b",
                          aws_secret_access_key="b", config=Config(max_pool_connections=8))
    deser = TypeDeserializer()

    def one(segment: int) -> tuple[int, int]:
        n = acc = 0
        kwargs: dict[str, Any] = {"TableName": "snap", "Segment": segment, "TotalSegments": segments,
                                  "ConsistentRead": True, "Limit": 1000}
        while True:
            page = client.scan(**kwargs)
            for item in page["Items"]:
                plain = {k: deser.deserialize(v) for k, v in item.items()}
                keys = {"pk": plain["pk"]}
                acc += touch(keys) + touch(plain) + touch(None)
                n += 1
            if "LastEvaluatedKey" not in page:
                return n, acc
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(segments)))
    return time.perf_counter() - t, sum(r[0] for r in results), sum(r[1] for r in results)


def baseline_in_process(url: str, segments: int) -> tuple[float, int, int]:
    out = subprocess.run([sys.executable, __file__, "--baseline-url", url, "--segments", str(segments)],
                         env=dict(os.environ, **ENV), check=True, capture_output=True, text=True).stdout
    seconds, n, acc = json.loads(out)
    return float(seconds), int(n), int(acc)


def snapshot(url: str, redis_url: str, workers: int, segments: int, tmp: Path, rep: int) -> dict[str, Any]:
    group = f"bench-snap-{workers}-{rep}-{os.getpid()}"
    out = tmp / f"{group}.jsonl"
    env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(out), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "worker", "snapshot", "--table", "snap", "--endpoint-url", url, "--redis-url",
            redis_url, "--group", group, "--handler", "bench.bench_handlers:touch_images", "--batch-size", "1000",
            "--snapshot-segments", str(segments), "--snapshot-read-units", "0", "--metrics-port", "0",
            "--log-level", "WARNING"]
    t = time.perf_counter()
    procs = [subprocess.Popen([*args, "--worker-id", f"w{i}"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
             for i in range(workers)]
    for p in procs:
        if p.wait(600) != 0:
            raise SystemExit(f"a snapshot worker exited with {p.returncode}")
    wall = time.perf_counter() - t
    state = SnapshotStore(connect(redis_url), group).state()
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return {"workers": workers, "wall_s": wall, "steady_s": (state.done_ms - state.started_ms) / 1000,
            "items": sum(r["n"] for r in rows), "acc": sum(r["acc"] for r in rows),
            "by_worker": {w: sum(r["n"] for r in rows if r["w"] == w) for w in {r["w"] for r in rows}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline-url", help=argparse.SUPPRESS)  # run (a) against this endpoint and print it
    args = parser.parse_args()
    if args.baseline_url:
        print(json.dumps(baseline(args.baseline_url, args.segments)))
        return
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs, \
            tempfile.TemporaryDirectory() as tmp:
        build_table(server, args.items)
        results: dict[str, list[float]] = {"baseline": [], "1": [], "2": [], "4": []}
        for rep in range(args.reps):
            seconds, n, acc = baseline_in_process(server.endpoint_url, args.segments)
            assert n == args.items
            results["baseline"].append(n / seconds)
            print(f"rep {rep}: boto3 parallel Scan + TypeDeserializer: {n / seconds:,.0f} items/s")
            for workers in (1, 2, 4):
                r = snapshot(server.endpoint_url, rs.url, workers, args.segments, Path(tmp), rep)
                assert r["items"] == args.items and r["acc"] == acc, "every item handed over once, same values"
                results[str(workers)].append(r["items"] / r["steady_s"])
                print(f"rep {rep}: shardlease snapshot, {workers} worker(s): {r['items'] / r['steady_s']:,.0f} "
                      f"items/s steady, {r['items'] / r['wall_s']:,.0f} items/s wall (start-up included); "
                      f"items per worker {sorted(r['by_worker'].values())}")
        base = statistics.median(results["baseline"])
        summary = {"items": args.items, "segments": args.segments, "baseline_items_per_s": base,
                   **{f"workers_{w}": {"items_per_s": statistics.median(results[w]),
                                       "ratio_vs_baseline": statistics.median(results[w]) / base}
                      for w in ("1", "2", "4")}}
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
