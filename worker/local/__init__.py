"""A local DynamoDB Streams endpoint with real shard lineage (see docs/local-endpoint.md).

Public API: :class:`LocalStreamsServer` (HTTP endpoint, context manager), :class:`StreamsModel`
(tables, streams, topology, faults), :class:`LocalTable` (write records), :class:`Faults` (knobs).
"""

from worker.local.model import Faults, LocalTable, StreamsApiError, StreamsModel
from worker.local.server import LocalStreamsServer

__all__ = ["Faults", "LocalStreamsServer", "LocalTable", "StreamsApiError", "StreamsModel"]
