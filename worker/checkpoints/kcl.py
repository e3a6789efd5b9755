"""Reading a KCL lease table (KCL 2 and 3, and the DynamoDB Streams Kinesis Adapter) for ``import-kcl``.

One item per shard, keyed by ``leaseKey`` (the shard id; ``<stream>:<shard id>`` in multi-stream mode).
``checkpoint`` is the last sequence number processed, or a sentinel: ``TRIM_HORIZON`` / ``LATEST``
(never checkpointed: start there), ``SHARD_END`` (finished), ``AT_TIMESTAMP`` (Kinesis only).
``checkpointSubSequenceNumber`` is for aggregated Kinesis records and is always 0 on DynamoDB Streams.
``leaseOwner``, ``leaseCounter``, ``ownerSwitchesSinceCheckpoint`` and ``parentShardId`` (a string set)
are shown in the plan.  A pending checkpoint (``pendingCheckpoint``, a shutdown in progress) is not
committed and is ignored, as KCL itself would on restart.
"""

from __future__ import annotations

import os
from typing import Any

from leaser import SHARD_END, SKIP_BEFORE_NOW, ConfigError

_SETTING = "lease-table (--lease-table)"
_SENTINELS = {"TRIM_HORIZON", "LATEST", "SHARD_END", "AT_TIMESTAMP"}


def read_lease_table(table: str, *, region: str | None, endpoint_url: str | None) -> dict[str, dict[str, Any]]:
    """shard id -> import entry (``checkpoint``, ``read_from_start``, ``skip_before_ms``, ``why``) from the
    lease table; ConfigError (one line) for a table that does not exist or is not a KCL lease table."""
    import boto3
    from boto3.dynamodb.types import TypeDeserializer
    from botocore.exceptions import BotoCoreError, ClientError

    # The lease table may live elsewhere than the stream's endpoint: AWS_ENDPOINT_URL_DYNAMODB wins when set.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or endpoint_url
    client = boto3.client("dynamodb", region_name=region or os.environ.get("AWS_REGION"), endpoint_url=endpoint)
    try:
        schema = client.describe_table(TableName=table)["Table"]["KeySchema"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise ConfigError(_SETTING, f"table {table!r} does not exist", "give the KCL application's lease table "
                              "(by default it is named after the application)") from None
        raise ConfigError(_SETTING, f"cannot read table {table!r}: {exc}", "check the region and permissions") from None
    except BotoCoreError as exc:
        raise ConfigError(_SETTING, f"cannot read table {table!r}: {exc}", "check the region and endpoint") from None
    keys = [k["AttributeName"] for k in schema]
    if keys != ["leaseKey"]:
        raise ConfigError(_SETTING, f"table {table!r} is not a KCL lease table (its key is {', '.join(keys)}, "
                          "not leaseKey)", "give the KCL application's lease table")
    deserialize = TypeDeserializer().deserialize
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items += [{name: deserialize(value) for name, value in item.items()} for item in page.get("Items", [])]
    entries: dict[str, dict[str, Any]] = {}
    for item in items:
        if "checkpoint" not in item:
            continue  # KCL 3 keeps other items (worker metrics, coordinator state) in other tables only
        shard_id = str(item["leaseKey"]).rsplit(":", 1)[-1]
        entries[shard_id] = entry(item)
    if not entries:
        raise ConfigError(_SETTING, f"table {table!r} holds no KCL leases (no item has a checkpoint)",
                          "give the lease table of a KCL application that has run")
    return entries


def entry(item: dict[str, Any]) -> dict[str, Any]:
    """One lease item as an import entry (see :func:`worker.checkpoints.transfer.plan_import`)."""
    checkpoint = str(item["checkpoint"])
    owner = item.get("leaseOwner") or "nobody"
    note = (f"KCL {checkpoint} (owner {owner}, leaseCounter {item.get('leaseCounter', '?')}, "
            f"{item.get('ownerSwitchesSinceCheckpoint', 0)} owner switches since checkpoint)")
    if checkpoint == "SHARD_END":
        return {"checkpoint": SHARD_END, "why": note}
    if checkpoint == "LATEST":
        # Never checkpointed, to start at the end: nothing written before the import is handled.
        return {"checkpoint": "", "read_from_start": True, "skip_before_ms": SKIP_BEFORE_NOW, "why": note}
    if checkpoint in _SENTINELS:  # TRIM_HORIZON, or AT_TIMESTAMP (no such iterator on DynamoDB Streams)
        return {"checkpoint": "", "read_from_start": True, "skip_before_ms": 0, "why": note}
    if not checkpoint.isdigit():
        raise ConfigError(_SETTING, f"lease {item['leaseKey']!r} has checkpoint {checkpoint!r}",
                          "a KCL checkpoint is a sequence number or TRIM_HORIZON, LATEST, SHARD_END")
    return {"checkpoint": checkpoint, "why": note}
