"""The `rnnkit` command line, as ``rnnkit.cli`` (the launcher itself is the top-level ``rnnkit_cli``).

``import rnnkit`` registers rnnkit's Keras classes and therefore loads Keras and TensorFlow, so
the console script cannot live in this package without making ``rnnkit serve`` pay for them:
it lives in :mod:`rnnkit_cli`, which imports nothing of rnnkit until a command needs it. This
module keeps the old import path working (``from rnnkit.cli import main``).
"""

from rnnkit_cli import COMMAND_MODULES, DEMO_MODULES, build_parser, main

__all__ = ["COMMAND_MODULES", "DEMO_MODULES", "build_parser", "main"]
