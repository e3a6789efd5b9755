"""An asyncio application that embeds a shardlease worker, for tests/e2e/test_embedding.py.

``python -m tests.e2e.embedding_host STREAM_ARN ENDPOINT_URL REDIS_URL GROUP METRICS_PORT``

It starts the worker with :meth:`worker.EmbeddedWorker.start_async` (handler: the recording handler,
given as a function object), prints ``started``, and runs until SIGTERM, which it handles itself on its
event loop (signals are the host's business: the worker installs none).  Then it stops the worker
with ``stop_async`` and prints one JSON line: the names of the threads alive before the start and after
the stop, the signal handlers before and after, and how many times a ticker task ran while the worker
stopped (the event loop is not blocked).  It exits 0 only if no thread the worker started is left.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading

from tests.e2e import recording_handler
from worker import EmbeddedWorker, build_config


async def main(stream_arn: str, endpoint_url: str, redis_url: str, group: str, metrics_port: int) -> int:
    config = build_config(stream_arn=stream_arn, endpoint_url=endpoint_url, redis_url=redis_url, group=group,
                          worker_id="host-1", lease_ttl_s=3, renew_interval_s=1, idle_poll_interval_s=0.2,
                          batch_size=10, metrics_port=metrics_port, metrics_host="127.0.0.1")
    threads_before = sorted(t.name for t in threading.enumerate())
    sigint_before = signal.getsignal(signal.SIGINT)
    embedded = EmbeddedWorker(config, handler=recording_handler.handle)
    await embedded.start_async()
    signals_untouched = signal.getsignal(signal.SIGINT) is sigint_before
    threads_running = sorted(t.name for t in threading.enumerate())

    stop_requested = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_requested.set)
    print("started", flush=True)
    await stop_requested.wait()

    ticks = 0
    stopping = True

    async def ticker() -> None:
        nonlocal ticks
        while stopping:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    await embedded.stop_async(timeout_s=30)
    stopping = False
    await ticking
    threads_after = sorted(t.name for t in threading.enumerate())
    print(json.dumps({"threads_before": threads_before, "threads_running": threads_running,
                      "threads_after": threads_after, "signals_untouched": signals_untouched,
                      "ticks_while_stopping": ticks, "state": embedded.state}), flush=True)
    return 0 if threads_after == threads_before else 1


if __name__ == "__main__":
    stream_arn, endpoint_url, redis_url, group, metrics_port = sys.argv[1:6]
    sys.exit(asyncio.run(main(stream_arn, endpoint_url, redis_url, group, int(metrics_port))))
