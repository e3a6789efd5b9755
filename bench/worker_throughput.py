"""One worker process draining a backlog vs the seed's plain boto3 loop, on the same local stream.

    .venv/bin/python bench/worker_throughput.py [--records 20000] [--shards 4] [--reps 3] [--json PATH]

Builds one backlog in an in-process :class:`worker.local.LocalStreamsServer`: ``--records``
MODIFY records (NEW_AND_OLD_IMAGES, ~1.4 KB of wire JSON each: nested maps, a list of maps,
numbers, strings, a string set, a bool, a null, a binary; the images of
``bench/decode_throughput.py``) spread over ``--shards`` shards.  Then, per repetition:

(a) plain boto3, in this process: a fresh ``dynamodbstreams`` client; DescribeStream; then per
    shard, sequentially, GetShardIterator TRIM_HORIZON and GetRecords (Limit 1000) until an
    empty page, ``TypeDeserializer`` on Keys/NewImage/OldImage of every record, and
    :func:`bench.bench_handlers.touch` on the result;
(b) one ``python -m worker run`` process (fresh group, ``--batch-size 1000``, a private
    redis-server) whose handler (:func:`bench.bench_handlers.touch_images`) touches the same
    decoded values and appends one line per batch; the bench polls that file until every
    record was handled.

(c) the ceiling (``bench/drain_ceiling.py``): one fresh process that does only what (b) cannot skip: the
    worker's imports, then the worker's decoder and the same handler on the same GetRecords bodies (captured
    once beforehand); no Redis, HTTP, AWS client or threads.  Its time is ``Popen`` -> imports done, plus the
    decode-and-handle loop.  It shows how far (b) is from what one CPython process can do with this handler.

Times: (b) from ``Popen`` (process start-up, imports, Redis, lease acquisition included), and
"steady" from the first batch's handler call to the last batch's end.  Start-up is reported as
``Popen`` -> the first GetRecords the server receives from the worker (counted server-side), and
``Popen`` -> the first handler call.  Both sides' touch sums
must agree.  The packages' bytecode is written first (:func:`compile_bytecode`), as an install does.
The local server runs in this process (threads) and shares the machine's cores with
the worker: its CPU is reported as "bench process CPU".
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import orjson
import psutil
from boto3.dynamodb.types import TypeDeserializer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import CallCounter  # noqa: E402
from bench.bench_handlers import touch_record_images  # noqa: E402
from bench.decode_throughput import _image  # noqa: E402
from leaser.embedded import RedisServer  # noqa: E402
from worker.local import LocalStreamsServer  # noqa: E402
from worker.reading.records import decode_get_records  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def build_backlog(server: LocalStreamsServer, n: int, shards: int, seed: int = 7) -> Any:
    """A table whose stream holds ``n`` MODIFY records with both images (items pre-exist without a stream)."""
    rng = random.Random(seed)
    table = server.create_table("orders", [("pk", "S"), ("sk", "S")], view_type="NEW_AND_OLD_IMAGES",
                                shards=shards, stream_enabled=False)
    olds = []
    for i in range(n):
        old = _image(rng, i, 1)
        table.put_item(old)
        olds.append(old)
    server.model.enable_stream(table)
    for i, old in enumerate(olds):
        new = _image(rng, i, 2)
        new["pk"], new["sk"] = old["pk"], old["sk"]
        assert table.put_item(new) is not None
    return table


def plain_boto3(endpoint_url: str, stream_arn: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    client = boto3.client("dynamodbstreams", endpoint_url=endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    t_client = time.perf_counter() - t0
    deser = TypeDeserializer()
    shard_ids: list[str] = []
    kwargs: dict[str, Any] = {"StreamArn": stream_arn}
    while True:
        desc = client.describe_stream(**kwargs)["StreamDescription"]
        shard_ids += [s["ShardId"] for s in desc["Shards"]]
        if not desc.get("LastEvaluatedShardId"):
            break
        kwargs["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]
    n = acc = calls = 0
    for shard_id in shard_ids:
        it = client.get_shard_iterator(StreamArn=stream_arn, ShardId=shard_id,
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            page = client.get_records(ShardIterator=it, Limit=1000)
            calls += 1
            records = page["Records"]
            if not records:
                break
            for rec in records:
                ddb = rec["dynamodb"]
                keys = {k: deser.deserialize(v) for k, v in ddb["Keys"].items()}
                new = {k: deser.deserialize(v) for k, v in ddb["NewImage"].items()} if "NewImage" in ddb else None
                old = {k: deser.deserialize(v) for k, v in ddb["OldImage"].items()} if "OldImage" in ddb else None
                acc += touch_record_images(keys, new, old)
            n += len(records)
            it = page.get("NextShardIterator")
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "client_s": t_client, "records": n, "acc": acc, "get_records_calls": calls,
            "cpu_s": time.process_time() - cpu0}


def one_worker(endpoint_url: str, stream_arn: str, redis_url: str, group: str, expected: int,
               tmp: Path, timeout_s: float = 300, counter: CallCounter | None = None) -> dict[str, Any]:
    out = tmp / f"{group}.jsonl"
    log_path = tmp / f"{group}.log"
    env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(out), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "worker", "run", "--stream-arn", stream_arn, "--endpoint-url", endpoint_url,
            "--redis-url", redis_url, "--group", group, "--worker-id", "bench-w1", "--handler",
            "bench.bench_handlers:touch_images", "--batch-size", "1000", "--metrics-port", "0"]
    cpu0 = time.process_time()
    with open(log_path, "wb") as log:
        t_wall0 = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        n = 0
        rows: list[dict[str, Any]] = []
        cpu = ps.cpu_times()
        while n < expected:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}; see {log_path}")
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                raise RuntimeError(f"timeout: {n}/{expected} handled; see {log_path}")
            time.sleep(0.02)
            cpu = ps.cpu_times()  # the last sample before the count completes (the worker then idles)
            if out.exists():
                rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
                n = sum(r["n"] for r in rows)
        wall = time.perf_counter() - t0
        bench_cpu = time.process_time() - cpu0
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    first = min(r["t0"] for r in rows)
    last = max(r["t1"] for r in rows)
    first_get = None
    if counter is not None:
        gets = [c[0] for c in counter.between(t_wall0, time.time() + 1, "GetRecords")]
        first_get = min(gets) - t_wall0 if gets else None
    return {"wall_s": wall, "records": n, "acc": sum(r["acc"] for r in rows), "batches": len(rows),
            "startup_s": first - t_wall0, "steady_s": last - first, "last_handled_s": last - t_wall0,
            "first_getrecords_s": first_get,
            "worker_cpu_s": cpu.user + cpu.system, "bench_cpu_s": bench_cpu}


def capture_pages(server: LocalStreamsServer, stream_arn: str) -> list[tuple[str, str]]:
    """Every GetRecords body a drain reads (the local model's answers, as its server sends them): per shard from
    TRIM_HORIZON, Limit 1000, to the first empty page."""
    model = server.model
    pages: list[tuple[str, str]] = []
    for shard_id in model.shard_ids(stream_arn):
        it = model.get_shard_iterator({"StreamArn": stream_arn, "ShardId": shard_id,
                                       "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
        while it:
            body = model.get_records({"ShardIterator": it, "Limit": 1000})
            records, it = decode_get_records(body, shard_id)
            if not records:
                break
            pages.append((body.decode(), shard_id))
    return pages


def ceiling(pages_file: Path, group: str, tmp: Path) -> dict[str, Any]:
    """(c): ``bench/drain_ceiling.py`` in a fresh process on the captured pages; its handler's lines are summed."""
    out = tmp / f"{group}.jsonl"
    env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(out), PYTHONPATH=str(ROOT))
    t_wall0 = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.drain_ceiling", str(pages_file), repr(t_wall0)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"bench.drain_ceiling exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    result["acc"] = sum(r["acc"] for r in rows)
    result["wall_s"] = result["imports_s"] + result["work_s"]
    return result


def compile_bytecode() -> None:
    """Write the bytecode of this checkout's packages, as installing them does (pip compiles a wheel's modules).

    Run from a checkout (an editable install) with PYTHONDONTWRITEBYTECODE=1, every worker process would
    compile each module of leaser, worker and the bench's handlers from source at every start (about
    85 ms of CPU here) and the start-up figures would count it as the worker's.
    """
    for package in ("leaser", "worker", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)

    compile_bytecode()
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        t = time.perf_counter()
        table = build_backlog(server, args.records, args.shards)
        arn = table.stream_arn
        sample = server.client().get_records(
            ShardIterator=server.client().get_shard_iterator(
                StreamArn=arn, ShardId=server.model.shard_ids(table)[0], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"], Limit=100)
        print(f"backlog: {args.records} records over {args.shards} shards, built in {time.perf_counter() - t:.1f} s; "
              f"{len(orjson.dumps(sample['Records'], default=str)) / len(sample['Records']):.0f} B/record "
              f"(JSON of boto3's parsed record); {os.cpu_count()} cores; worker logs in {tmp}")
        pages_file = tmp / "pages.json"
        pages_file.write_bytes(orjson.dumps(capture_pages(server, arn)))
        results: list[dict[str, Any]] = []
        for rep in range(args.reps):
            a = plain_boto3(server.endpoint_url, arn)
            counter = CallCounter(server, ("GetRecords",))
            try:
                b = one_worker(server.endpoint_url, arn, rs.url, f"tp{rep}-{os.getpid()}", args.records, tmp,
                               counter=counter)
            finally:
                counter.restore()
            c = ceiling(pages_file, f"ceiling{rep}-{os.getpid()}", tmp)
            assert a["records"] == b["records"] == c["records"] == args.records, (a["records"], b["records"],
                                                                                  c["records"])
            assert a["acc"] == b["acc"] == c["acc"], f"touch sums differ: boto3 {a['acc']} worker {b['acc']} " \
                                                     f"ceiling {c['acc']}"
            results.append({"rep": rep, "plain": a, "worker": b, "ceiling": c})
            print(f"rep {rep}: plain {a['wall_s']:.2f} s ({a['records'] / a['wall_s']:,.0f}/s) | worker "
                  f"{b['wall_s']:.2f} s from Popen, first GetRecords at {b['first_getrecords_s']:.2f} s, "
                  f"first handler call at {b['startup_s']:.2f} s, steady {b['steady_s']:.2f} s "
                  f"({b['records'] / b['steady_s']:,.0f}/s), worker CPU {b['worker_cpu_s']:.2f} s, "
                  f"bench(server) CPU {b['bench_cpu_s']:.2f} s | ceiling {c['wall_s']:.2f} s (imports "
                  f"{c['imports_s']:.2f} s + decode and handle {c['work_s']:.2f} s)")

    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in results)

    n = args.records
    pa, ww, ws = med("plain", "wall_s"), med("worker", "wall_s"), med("worker", "steady_s")
    rows = [
        ("(a) plain boto3 loop, in-process (client creation incl.)", pa, n / pa, "-",
         f"{med('plain', 'cpu_s'):.2f} (bench process, server incl.)"),
        ("(b) worker process, from Popen", ww, n / ww, f"{pa / ww:.1f}x",
         f"{med('worker', 'worker_cpu_s'):.2f} worker + {med('worker', 'bench_cpu_s'):.2f} server"),
        ("(b) worker, first batch -> last batch end", ws, n / ws, f"{pa / ws:.1f}x", ""),
        ("(c) ceiling: the worker's imports + its decoder + the handler, no I/O", med("ceiling", "wall_s"),
         n / med("ceiling", "wall_s"), f"{pa / med('ceiling', 'wall_s'):.1f}x", ""),
    ]
    print(f"\nmedian of {args.reps} repetitions, {n} records, {args.shards} shards, batch/Limit 1000:\n")
    print("| | wall s | records/s | speed-up vs (a) | CPU s |")
    print("|---|---|---|---|---|")
    for label, wall, rate, ratio, cpu in rows:
        print(f"| {label} | {wall:.2f} | {rate:,.0f} | {ratio} | {cpu} |")
    print(f"\nworker start-up, median: Popen -> first GetRecords {med('worker', 'first_getrecords_s'):.2f} s; "
          f"Popen -> first handler call {med('worker', 'startup_s'):.2f} s")
    cpu_b = med("worker", "worker_cpu_s") + med("worker", "bench_cpu_s")
    print(f"CPU seconds (less sensitive to other load on the machine): (a) {med('plain', 'cpu_s'):.2f} vs (b) "
          f"{cpu_b:.2f} worker+server -> {med('plain', 'cpu_s') / cpu_b:.1f}x")
    print("walls per rep: " + "; ".join(f"(a) {r['plain']['wall_s']:.2f} (b) {r['worker']['wall_s']:.2f} "
                                        f"(c) {r['ceiling']['wall_s']:.2f}"
                                        for r in results))
    if args.json:
        Path(args.json).write_text(orjson.dumps({"records": n, "shards": args.shards, "reps": results},
                                                option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
