"""Tasks: a spec (how to prompt and score) plus deterministic train/dev/test splits.

`load_task("sentiment")` loads a built-in task from packaged data; `load_task("my_task.yaml")`
loads a user task file pointing at CSV or JSONL data.
"""

from frozenlm.tasks.builtin import BUILTIN_TASKS, list_tasks, task_summaries
from frozenlm.tasks.files import load_task
from frozenlm.tasks.spec import Example, Task, TaskSpec

__all__ = [
    "BUILTIN_TASKS",
    "Example",
    "Task",
    "TaskSpec",
    "list_tasks",
    "load_task",
    "task_summaries",
]
