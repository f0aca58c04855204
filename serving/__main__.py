"""``python -m serving``: ``rnnkit serve`` without importing rnnkit (fast cold start)."""

from rnnkit_serving.server.cli import main

raise SystemExit(main())
