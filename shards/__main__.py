"""``python -m shards``: the command line."""

from shards.cli import main

raise SystemExit(main())
