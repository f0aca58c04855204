"""Bidirectional layers help two-sided context — measured by `rnnkit.experiments.bidirectional`.

    .venv/bin/python bench/bidirectional.py [--quick] [--seed N] [--out bench/out/bidirectional]

Same as `rnnkit bench bidirectional`: prints a table, writes bidirectional.png and bidirectional.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("bidirectional"))
