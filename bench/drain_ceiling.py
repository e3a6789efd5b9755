"""The ceiling of ``bench/worker_throughput.py``'s drain: only the work no worker can skip, in one fresh process.

    python -m bench.drain_ceiling PAGES_FILE POPEN_WALL_TIME      (run by bench/worker_throughput.py)

What a worker draining the backlog cannot avoid, and nothing else:

* the imports of ``shardlease run`` (``worker.cli``, ``worker.runtime``) and of the bench's handler module, with
  the cyclic GC off until they are done and the heap frozen after, as ``shardlease run`` does;
* the worker's page decoder (:func:`worker.reading.records.decode_get_records`) on every GetRecords body the
  drain reads (captured beforehand into ``PAGES_FILE``, whose loading is not timed);
* the bench handler (:func:`bench.bench_handlers.touch_images`) on every page, as the worker calls it.

No Redis, no HTTP, no AWS client, no threads, no checkpoints, no metrics.  The handler appends its lines to
``$SHARDLEASE_BENCH_OUT`` as in the worker (their touch sum must equal the plain loop's).  Prints one JSON
object: ``imports_s`` (``POPEN_WALL_TIME``, the parent's ``time.time()`` at ``Popen``, to the end of the
imports), ``work_s`` (decoding and handling every page) and ``records``.  The ceiling is
``imports_s + work_s``: a worker can only come close to it from above.
"""

from __future__ import annotations

import gc
import sys
import time

gc.disable()  # shardlease run keeps it off through start-up (worker/cli.py)

import orjson  # noqa: E402

import worker.cli  # noqa: E402  (what `shardlease run` imports)
import worker.runtime  # noqa: E402, F401
from bench.bench_handlers import touch_images  # noqa: E402
from worker.reading.records import decode_get_records  # noqa: E402


class _Context:
    """The two fields of the handler context that ``touch_images`` reads."""

    worker_id = "ceiling"

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id


def main() -> None:
    popen_wall = float(sys.argv[2])
    imports_s = time.time() - popen_wall
    gc.freeze()
    gc.enable()
    with open(sys.argv[1], "rb") as f:
        pages: list[tuple[str, str]] = orjson.loads(f.read())
    bodies = [(body.encode(), shard_id) for body, shard_id in pages]
    del pages
    t0 = time.perf_counter()
    records = 0
    for body, shard_id in bodies:
        batch, _ = decode_get_records(body, shard_id)
        touch_images(batch, _Context(shard_id))
        records += len(batch)
        del batch
    work_s = time.perf_counter() - t0
    print(orjson.dumps({"imports_s": imports_s, "work_s": work_s, "records": records}).decode())


if __name__ == "__main__":
    main()
