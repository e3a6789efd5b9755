"""Benchmark: serving GetRecords pages vs. decoding them on the client.

Run: ``.venv/bin/python bench/local_endpoint.py [pages]`` (not collected by pytest).

Prints, per 1000-record page of ~1.4 KB records: the server-side page build time (model only),
the HTTP round trip with an orjson decode (keep-alive, http.client), and boto3 end to end
(with and without TypeDeserializer over every image).
"""

from __future__ import annotations

import http.client
import sys
import time
from typing import Any
from urllib.parse import urlparse

import orjson
from boto3.dynamodb.types import TypeDeserializer

from worker.local import LocalStreamsServer


def main(pages: int = 20) -> None:
    with LocalStreamsServer(empty_page_probability=0.0) as server:
        table = server.create_table("bench", [("pk", "S"), ("sk", "S")], shards=1)
        filler = {f"attr{j:02d}": {"S": "v" * 40} for j in range(15)}
        for i in range(5000):
            table.put_item({"pk": {"S": f"key-{i}"}, "sk": {"S": "0"}, "n": {"N": str(i)}, **filler})
        (shard_id,) = server.model.shard_ids(table)
        iterator = server.model.get_shard_iterator(
            {"StreamArn": table.stream_arn, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"}
        )["ShardIterator"]
        body = server.model.get_records({"ShardIterator": iterator})
        n_records = len(orjson.loads(body)["Records"])
        print(f"page: {n_records} records, {len(body) / 1024:.0f} KiB, {len(body) / n_records:.0f} B/record")

        t0 = time.perf_counter()
        for _ in range(pages * 10):
            server.model.get_records({"ShardIterator": iterator})
        build = (time.perf_counter() - t0) / (pages * 10)

        url = urlparse(server.endpoint_url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
        payload = orjson.dumps({"ShardIterator": iterator})
        headers = {"X-Amz-Target": "DynamoDBStreams_20120810.GetRecords", "Content-Type": "application/x-amz-json-1.0"}
        t0 = time.perf_counter()
        for _ in range(pages):
            conn.request("POST", "/", payload, headers)
            orjson.loads(conn.getresponse().read())
        raw_http = (time.perf_counter() - t0) / pages
        conn.close()

        client = server.client()
        client.get_records(ShardIterator=iterator)  # warm up
        t0 = time.perf_counter()
        for _ in range(pages):
            client.get_records(ShardIterator=iterator)
        boto = (time.perf_counter() - t0) / pages

        deser = TypeDeserializer()
        t0 = time.perf_counter()
        for _ in range(pages):
            for r in client.get_records(ShardIterator=iterator)["Records"]:
                for name in ("Keys", "NewImage", "OldImage"):
                    image: dict[str, Any] = r["dynamodb"].get(name) or {}
                    {k: deser.deserialize(v) for k, v in image.items()}
        boto_deser = (time.perf_counter() - t0) / pages

    print(f"server page build (model.get_records):     {build * 1e3:8.3f} ms/page")
    print(f"HTTP round trip + orjson.loads:             {raw_http * 1e3:8.3f} ms/page")
    print(f"boto3 get_records end to end:               {boto * 1e3:8.3f} ms/page")
    print(f"boto3 get_records + TypeDeserializer:       {boto_deser * 1e3:8.3f} ms/page")
    print(f"boto3 / server build: {boto / build:.0f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
