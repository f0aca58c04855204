"""LSTMs count aⁿbⁿ past the training n, GRUs do not (Weiss, Goldberg & Yahav 2018) — measured by `rnnkit.experiments.counting`.

    .venv/bin/python bench/counting.py [--quick] [--seed N] [--out bench/out/counting]

Same as `rnnkit bench counting`: prints a table, writes counting.png and counting.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("counting"))
