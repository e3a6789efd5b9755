"""Run the local endpoint standalone.

``python -m worker.local --port 8000 --table orders --shards 4`` prints ``<endpoint URL> <stream ARN>``
on stdout's first line, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from worker.local.model import DEFAULT_FIRST_SEQUENCE_NUMBER, VIEW_TYPES
from worker.local.server import LocalStreamsServer


def _key(text: str) -> tuple[str, str]:
    name, _, kind = text.partition(":")
    return name, (kind or "S").upper()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--table", default="orders", help="table to create (its stream ARN is printed)")
    parser.add_argument("--shards", type=int, default=4, help="initial shards of the table's stream")
    parser.add_argument("--key", action="append", type=_key, help="key attribute NAME[:S|N|B]; repeat for a sort key")
    parser.add_argument("--view-type", default="NEW_AND_OLD_IMAGES", choices=VIEW_TYPES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-sequence-number", type=int, default=DEFAULT_FIRST_SEQUENCE_NUMBER)
    parser.add_argument("--iterator-ttl-s", type=float, default=900.0)
    parser.add_argument("--empty-page-probability", type=float, default=0.05)
    args = parser.parse_args(argv)

    server = LocalStreamsServer(
        args.host,
        args.port,
        seed=args.seed,
        first_sequence_number=args.first_sequence_number,
        iterator_ttl_s=args.iterator_ttl_s,
        empty_page_probability=args.empty_page_probability,
    )
    table = server.create_table(args.table, args.key or [("pk", "S")], view_type=args.view_type, shards=args.shards)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    print(f"{server.endpoint_url} {table.stream_arn}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
