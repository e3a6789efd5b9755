"""Instructions per empty GetRecords call, counted by valgrind's callgrind: lean path vs botocore's pipeline.

    .venv/bin/python bench/call_instructions.py [--calls 1000] [--json PATH]

CPU time on a shared machine moves with the load; instruction counts do not.  One
:class:`~worker.reading.streams.StreamsClient` in a process run under ``valgrind --tool=callgrind``
(``PYTHONHASHSEED=0``) makes 20 warm-up GetRecords calls on an empty shard of ``python -m worker.local``
(its own process, not counted), then ``--calls`` more.  The same script with 0 calls gives the
fixed cost (interpreter, imports, client); per call = (total - fixed) / calls.  Client side only:
``StreamsClient.get_records`` (request, HTTP exchange, decode), not the worker's scheduler.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, write_json

_CLIENT = r"""
import os, subprocess, sys
mode, n = sys.argv[1], int(sys.argv[2])
srv = subprocess.Popen([sys.argv[3], "-m", "worker.local", "--shards", "1", "--empty-page-probability", "0"],
                       stdout=subprocess.PIPE, text=True)
try:
    url, arn = srv.stdout.readline().split()
    from worker.reading.streams import StreamsClient
    c = StreamsClient(region_name="us-east-1", endpoint_url=url, read_timeout=60, lean_http=(mode == "lean"))
    sid = c.list_shards(arn)[0].shard_id
    it = c.get_shard_iterator(arn, sid, "LATEST")
    for _ in range(20):
        c.get_records(it, shard_id=sid)
    assert c.lean_path == (mode == "lean")
    for _ in range(n):
        assert not c.get_records(it, shard_id=sid).records
finally:
    srv.terminate()
"""


def instructions(mode: str, calls: int, tmp: Path) -> int:
    out = tmp / f"cg.{mode}.{calls}"
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench")
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c",
                           _CLIENT, mode, str(calls), sys.executable],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    fixed = instructions("botocore", 0, tmp)
    result: dict[str, object] = {"benchmark": "call_instructions", "calls": args.calls, "fixed": fixed}
    for mode in ("botocore", "lean"):
        total = instructions(mode, args.calls, tmp)
        per_call = (total - fixed) / args.calls
        result[mode] = per_call
        print(f"{mode:9s}: {total:,} instructions with {args.calls} calls, {fixed:,} with none -> "
              f"{per_call:,.0f} per call", flush=True)
    print(f"\nbotocore / lean: {float(result['botocore']) / float(result['lean']):.1f}x "  # type: ignore[arg-type]
          "fewer instructions per call on the lean path")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
