"""A vanilla RNN's gradient norm falls geometrically with lag — measured by `rnnkit.experiments.vanishing`.

    .venv/bin/python bench/vanishing.py [--quick] [--seed N] [--out bench/out/vanishing]

Same as `rnnkit bench vanishing`: prints a table, writes vanishing.png and vanishing.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("vanishing"))
