"""Records/s decoding one GetRecords page: plain boto3 vs shardlease's fast path.

    .venv/bin/python bench/decode_throughput.py [--records 1000] [--repeat 7]

Builds a realistic page (NEW_AND_OLD_IMAGES, ~1.4 KB of wire JSON per record: nested maps, a
list of maps, numbers, strings, a string set, a bool, a null and a binary) and decodes it:

(a) plain boto3: botocore's JSON response parser on an HTTP response dict with the GetRecords
    output shape (what a real client runs), then ``TypeDeserializer`` on Keys/NewImage/OldImage;
(b) fast path: :func:`worker.reading.records.decode_get_records` (msgspec structs + hand-written unmarshaller).

Prints the best of ``--repeat`` runs for each, and the ratio.  Single thread, one core.
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import time
from pathlib import Path
from typing import Any

import botocore.session
import orjson
from boto3.dynamodb.types import TypeDeserializer
from botocore.parsers import create_parser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.reading.records import decode_get_records

SHARD = "shardId-00000001700000000000-abcdef01"


def _image(rng: random.Random, order: int, version: int) -> dict[str, Any]:
    items = [
        {
            "M": {
                "sku": {"S": f"SKU-{rng.randrange(10**6):06d}"},
                "qty": {"N": str(rng.randrange(1, 9))},
                "price": {"N": f"{rng.randrange(100, 99999) / 100:.2f}"},
            }
        }
        for _ in range(2)
    ]
    return {
        "pk": {"S": f"ORDER#{order:08d}"},
        "sk": {"S": f"V#{version:04d}"},
        "status": {"S": rng.choice(["PLACED", "PAID", "SHIPPED", "DELIVERED"])},
        "total": {"N": f"{rng.randrange(100, 999999) / 100:.2f}"},
        "version": {"N": str(version)},
        "customer": {
            "M": {
                "id": {"S": f"CUST#{rng.randrange(10**7):07d}"},
                "name": {"S": "Ada Lovelace"},
                "address": {
                    "M": {
                        "street": {"S": "12 Engine Way"},
                        "city": {"S": "London"},
                        "zip": {"S": "NW1 6XE"},
                    }
                },
            }
        },
        "items": {"L": items},
        "tags": {"SS": ["gift", "priority"]},
        "giftWrap": {"BOOL": rng.random() < 0.5},
        "coupon": {"NULL": True},
        "checksum": {"B": base64.b64encode(rng.randbytes(24)).decode()},
    }


def build_page(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    records = []
    seq = 10**20
    for i in range(n):
        seq += rng.randrange(1, 1000)
        old = _image(rng, i, 1)
        new = _image(rng, i, 2)
        records.append(
            {
                "eventID": f"{rng.getrandbits(128):032x}",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1714566896.0 + i // 100,
                    "Keys": {"pk": new["pk"], "sk": new["sk"]},
                    "NewImage": new,
                    "OldImage": old,
                    "SequenceNumber": str(seq),
                    "SizeBytes": 1100,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    return orjson.dumps({"Records": records, "NextShardIterator": "arn:aws:dynamodb:...|1|AAAA"})


def plain_boto3(body: bytes, output_shape: Any, parser: Any, deser: TypeDeserializer) -> int:
    response = {"status_code": 200, "headers": {"content-type": "application/x-amz-json-1.0"}, "body": body}
    parsed = parser.parse(response, output_shape)
    n = 0
    for rec in parsed["Records"]:
        ddb = rec["dynamodb"]
        for part in ("Keys", "NewImage", "OldImage"):
            image = ddb.get(part)
            if image is not None:
                {k: deser.deserialize(v) for k, v in image.items()}
        n += 1
    return n


def fast_path(body: bytes) -> int:
    records, _ = decode_get_records(body, SHARD)
    return len(records)


def best_rate(fn: Any, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = fn()
        dt = time.perf_counter() - t0
        assert got == n, got
        best = min(best, dt)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    body = build_page(args.records)
    model = botocore.session.get_session().get_service_model("dynamodbstreams")
    shape = model.operation_model("GetRecords").output_shape
    parser = create_parser("json")
    deser = TypeDeserializer()

    per_record = len(body) / args.records
    print(f"page: {args.records} records, {len(body) / 1024:.0f} KiB, {per_record:.0f} B/record (wire JSON)")
    plain = best_rate(lambda: plain_boto3(body, shape, parser, deser), args.records, args.repeat)
    fast = best_rate(lambda: fast_path(body), args.records, args.repeat)
    print(f"(a) plain boto3 (botocore JSON parser + TypeDeserializer): {plain:10,.0f} records/s")
    print(f"(b) fast path (msgspec + worker.reading.records):                 {fast:10,.0f} records/s")
    print(f"ratio fast/plain: {fast / plain:.1f}x")


if __name__ == "__main__":
    main()
