"""Optional OpenTelemetry spans (worker/tracing.py), checked with the SDK's in-memory exporter.

A shard consumer reads the local stream endpoint and checkpoints to a real Redis; its handler calls
are spans linked to the GetRecords spans that read their records.  Without opentelemetry, or with
it but no tracer provider, nothing is traced and nothing fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from leaser import LeaseConfig, LeaseManager, LeaseStore, ShardSpec
from worker import tracing
from worker.consumer import ConsumerSettings, ShardConsumer
from worker.handling.delivery import DeliveryFactory, DeliveryPolicy
from worker.handling.destinations import NoDestination
from worker.handling.handler import as_handler
from worker.local import LocalStreamsServer, LocalTable
from worker.observability import Metrics
from worker.reading.streams import StreamsClient


class Scripted:
    """A handler whose n-th call does ``script[n]``: ok, partial (fails the batch's last record), TimeoutError or
    RuntimeError; ok once the script runs out.  Each call opens a span of its own (the user's code)."""

    def __init__(self, script: list[str], provider: TracerProvider | None = None) -> None:
        self.script = list(script)
        self.calls: list[list[str]] = []
        self._tracer = provider.get_tracer("user-code") if provider else None

    def handle(self, records: list[Any], ctx: Any) -> Any:
        self.calls.append([r.sequence_number for r in records])
        if self._tracer is not None:
            with self._tracer.start_as_current_span("user.write"):
                pass
        step = self.script.pop(0) if self.script else "ok"
        if step == "timeout":
            raise TimeoutError("cancelled at --handler-timeout")
        if step == "raise":
            raise RuntimeError("sink unavailable")
        if step == "partial":
            return {"batchItemFailures": [{"itemIdentifier": records[-1].sequence_number}]}
        return None


@pytest.fixture(autouse=True)
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "t")


@pytest.fixture
def stream() -> Iterator[tuple[LocalStreamsServer, LocalTable, StreamsClient]]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        streams = StreamsClient(region_name="us-east-1", endpoint_url=server.endpoint_url)
        yield server, table, streams
        streams.close()


def _consume(stream: tuple[LocalStreamsServer, LocalTable, StreamsClient], redis_client: redis.Redis, group: str,
             handler: Scripted, deliveries: DeliveryFactory | None, *, records: int, steps: int) -> list[str]:
    """Write ``records`` records, consume them in batches of 2 for ``steps`` steps; the sequence numbers."""
    server, table, streams = stream
    written = [str(table.put_item({"pk": f"k{i}", "n": i})) for i in range(records)]
    shard_id = server.model.shard_ids(table, open_only=True)[0]
    store = LeaseStore(redis_client, group, LeaseConfig(lease_ttl_s=30, renew_interval_s=5))
    store.register_shards([ShardSpec(shard_id)])
    manager = LeaseManager(store, "w1")
    (acquired,) = manager._acquire([shard_id])
    settings = ConsumerSettings(stream_arn=table.stream_arn, group=group, worker_id="w1", batch_size=2,
                                initial_position="TRIM_HORIZON", idle_poll_interval_s=1.0, lease_ttl_s=30.0)
    metrics = deliveries.metrics if deliveries is not None else Metrics("w1", group)
    consumer = ShardConsumer(acquired, settings=settings, streams=streams, manager=manager,
                             handler=as_handler(handler), metrics=metrics, on_shard_ended=lambda s, c: None,
                             deliveries=deliveries)
    for _ in range(steps):
        consumer.step()
    return written


def _factory(handler: Scripted, tracing_: tracing.Tracing | None, group: str) -> DeliveryFactory:
    return DeliveryFactory(call=as_handler(handler).handle, policy=DeliveryPolicy(), destination=NoDestination(),
                           metrics=Metrics("w1", group), backoff=lambda attempt: 0.0, tracing=tracing_)


def test_each_handler_call_is_a_span_linked_to_its_getrecords_spans(
    stream: tuple[LocalStreamsServer, LocalTable, StreamsClient], redis_client: redis.Redis, group: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = Scripted(["ok", "partial", "timeout", "raise"], provider)
    written = _consume(stream, redis_client, group, handler, _factory(handler, tracing.Tracing.for_provider(provider),
                                                                      group), records=6, steps=8)
    assert handler.calls == [written[0:2], written[2:4], [written[3]], [written[3]], [written[3]], written[4:6]]

    spans = exporter.get_finished_spans()
    reads = [s for s in spans if s.name == "GetRecords"]
    calls = [s for s in spans if s.name == "shardlease.handle"]
    assert all(s.instrumentation_scope is not None and s.instrumentation_scope.name == "shardlease"
               for s in reads + calls)
    assert [_attr(s, "shardlease.outcome") for s in calls] == ["ok", "partial", "timeout", "failed", "ok", "ok"]
    shard_id = _attr(calls[0], "shardlease.shard_id")
    assert shard_id.startswith("shardId-")
    for span, batch in zip(calls, handler.calls, strict=True):
        assert span.kind == trace.SpanKind.CONSUMER
        assert _attr(span, "shardlease.shard_id") == shard_id
        assert _attr(span, "shardlease.batch_size") == len(batch)
        assert _attr(span, "shardlease.first_sequence_number") == batch[0]
        assert _attr(span, "shardlease.last_sequence_number") == batch[-1]
    # Failures carry their exception and an ERROR status; the others do not.
    assert [s.status.status_code for s in calls] == [trace.StatusCode.UNSET, trace.StatusCode.UNSET,
                                                    trace.StatusCode.ERROR, trace.StatusCode.ERROR,
                                                    trace.StatusCode.UNSET, trace.StatusCode.UNSET]
    assert [e.attributes["exception.type"] for e in calls[2].events if e.attributes] == ["TimeoutError"]
    assert [e.attributes["exception.type"] for e in calls[3].events if e.attributes] == ["RuntimeError"]

    # Each GetRecords call is a span; a handler span links the ones that read its batch.
    assert all(s.kind == trace.SpanKind.CLIENT and _attr(s, "shardlease.shard_id") == shard_id for s in reads)
    with_records = {s.context.span_id: s for s in reads if _attr(s, "shardlease.records") > 0}
    assert sum(_attr(s, "shardlease.records") for s in with_records.values()) == 6
    linked = [[link.context.span_id for link in span.links] for span in calls]
    assert all(ids and set(ids) <= set(with_records) for ids in linked)
    assert linked[0] != linked[1] and linked[1] == linked[2] == linked[3] == linked[4]  # retries: the same batch
    # The handler's own spans are children of its call's span.
    user = [s for s in spans if s.name == "user.write"]
    assert len(user) == 6
    assert all(u.parent is not None and u.parent.span_id == c.context.span_id for u, c in zip(user, calls, strict=True))


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None and key in span.attributes, (span.name, key)
    return span.attributes[key]


def test_a_configured_global_provider_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert isinstance(tracing.from_environment(), tracing.Tracing)


def test_installed_but_no_provider_configured_traces_nothing(
    stream: tuple[LocalStreamsServer, LocalTable, StreamsClient], redis_client: redis.Redis, group: str
) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nobody set one in this process
    assert tracing.from_environment() is None
    handler = Scripted(["partial", "raise"])
    factory = DeliveryFactory(call=as_handler(handler).handle, policy=DeliveryPolicy(), destination=NoDestination(),
                              metrics=Metrics("w1", group), backoff=lambda attempt: 0.0)
    assert factory.tracing is None
    written = _consume(stream, redis_client, group, handler, factory, records=4, steps=5)
    assert handler.calls == [written[0:2], [written[1]], [written[1]], written[2:4]]


def test_without_opentelemetry_nothing_is_traced_and_nothing_fails(
    stream: tuple[LocalStreamsServer, LocalTable, StreamsClient], redis_client: redis.Redis, group: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError):
        import opentelemetry.trace  # noqa: F401
    assert tracing.from_environment() is None
    handler = Scripted([])
    written = _consume(stream, redis_client, group, handler, None, records=3, steps=3)  # the consumer's default
    assert handler.calls == [written[0:2], written[2:3]]


def test_an_async_call_cancelled_at_its_timeout_is_a_timeout_span() -> None:
    """An async handler cut short at --handler-timeout raises HandlerTimeout: its span's outcome is ``timeout``."""
    import asyncio

    from worker.handling.aio import HandlerTimeout
    from worker.reading.records import Record

    async def never_returns(records: list[Any], ctx: Any) -> None:
        await asyncio.Event().wait()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = as_handler(never_returns)
    handler.use_runtime(timeout_s=0.2)
    record = Record.from_wire({"eventID": "e1", "eventName": "INSERT", "dynamodb": {
        "SequenceNumber": "1", "Keys": {"pk": {"S": "k"}}, "ApproximateCreationDateTime": 1.7e9}}, "shardId-1")
    traced = tracing.Tracing.for_provider(provider).handler_call(
        "shardId-1", lambda batch: handler.handle(batch, None, shard_id="shardId-1"), [])
    try:
        with pytest.raises(HandlerTimeout):
            traced([record])
    finally:
        handler.close()
    (span,) = exporter.get_finished_spans()
    assert _attr(span, "shardlease.outcome") == "timeout"
    assert span.status.status_code == trace.StatusCode.ERROR
