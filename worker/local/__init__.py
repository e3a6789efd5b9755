"""A local DynamoDB Streams endpoint with real shard lineage (see docs/local-endpoint.md)."""
