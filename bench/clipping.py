"""Global-norm clipping and the guard tame exploding gradients — measured by `rnnkit.experiments.clipping`.

    .venv/bin/python bench/clipping.py [--quick] [--seed N] [--out bench/out/clipping]

Same as `rnnkit bench clipping`: prints a table, writes clipping.png and clipping.json into --out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rnnkit.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("clipping"))
