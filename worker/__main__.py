"""``python -m worker``: the shardlease command."""

from worker.cli import main

raise SystemExit(main())
