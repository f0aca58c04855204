"""Skip connections keep deep stacks trainable (2/4/8 layers) — measured by `rnnkit.experiments.depth`.

    .venv/bin/python bench/depth.py [--quick] [--seed N] [--out bench/out/depth]

Same as `rnnkit bench depth`: prints a table, writes depth.png and depth.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("depth"))
