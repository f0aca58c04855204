"""Built-in sequence tasks: seeded, deterministic, no download.

| name | generator | kind | what it needs |
|---|---|---|---|
| ``adding`` | `adding_problem` | regression | memory over up to ``length`` steps |
| ``copy`` | `copy_recall` | classification | reproduce a token ``lag`` steps later |
| ``anbn`` | `anbn_counting` | classification | counting |
| ``sentiment`` | `sentiment` | classification | context on both sides of a word |
"""

from rnnkit.tasks.adding import ADDING_TOLERANCE, adding_problem
from rnnkit.tasks.copy_recall import copy_recall
from rnnkit.tasks.counting import ANBN_SYMBOLS, anbn_counting
from rnnkit.tasks.sentiment import NEGATIVE, NEGATORS, POSITIVE, SENTIMENT_VOCABULARY, sentiment, sentiment_label
from rnnkit.tasks.task import TASK_KINDS, Task, make_task, task_names

__all__ = [
    "ADDING_TOLERANCE",
    "ANBN_SYMBOLS",
    "NEGATIVE",
    "NEGATORS",
    "POSITIVE",
    "SENTIMENT_VOCABULARY",
    "TASK_KINDS",
    "Task",
    "adding_problem",
    "anbn_counting",
    "copy_recall",
    "make_task",
    "sentiment",
    "sentiment_label",
    "task_names",
]
