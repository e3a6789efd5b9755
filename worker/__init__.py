"""The shardlease consumer runtime."""
