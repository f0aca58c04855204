"""``python -m serving``: ``rnnkit serve`` without importing rnnkit (fast cold start)."""

from serving.cli import main

raise SystemExit(main())
