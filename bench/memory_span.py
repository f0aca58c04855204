"""Usable memory ~7 steps (vanilla RNN), ~100 (LSTM), on the adding problem and copy task — measured by
`rnnkit.experiments.memory_span`.

    .venv/bin/python bench/memory_span.py [--quick] [--seed N] [--out bench/out/memory_span]

Same as `rnnkit bench memory_span`: prints a table, writes memory_span.png and memory_span.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("memory_span"))
