"""Checkpoint tools: show a group's positions, rewind or fast-forward them, export and import them,
and take them over from a KCL lease table.

``plan`` decides (pure: leases and the stream's shards in, one step per shard out), ``commands`` runs
the ``shardlease checkpoint`` commands, ``transfer`` reads and writes position files and KCL lease
tables.  Every change goes through :meth:`leaser.LeaseStore.reposition`: one fenced script per change.
"""
