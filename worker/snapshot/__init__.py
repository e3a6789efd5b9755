"""The table's snapshot, shared by the fleet and bracketed with the stream (docs/snapshot.md).

* :mod:`worker.snapshot.scan`: DescribeTable facts, consistent Scan pages, items as Records.
* :mod:`worker.snapshot.gate`: what stream consumers ask before handing records over.
* :mod:`worker.snapshot.runner`: segment leases, pages in flight, delivery, the read-unit bucket.
* :mod:`worker.snapshot.command`: ``shardlease snapshot`` and ``status`` lines.
"""
