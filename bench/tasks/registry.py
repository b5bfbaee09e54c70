"""The task registry: task names -> lazily imported :class:`bench.tasks.base.Task` subclasses.

A :class:`models.registry.Registry` over the built-in table below, the entry-point group
``invertible_bench.tasks`` (a third-party package declares ``my_task = "my_pkg.tasks:MyTask"``) and
``"module:Class"`` strings. Names are listed in the order a suite runs them: the built-ins as below (training
tasks first), then plug-ins sorted.
"""

from __future__ import annotations

from bench.tasks.base import Task
from models.registry import Registry

ENTRY_POINT_GROUP = "invertible_bench.tasks"

_TASKS: dict[str, str] = {
    "likelihood": "bench.tasks.likelihood:LikelihoodTask",
    "classification": "bench.tasks.classification:ClassificationTask",
    "inverse_cost": "bench.tasks.inverse_cost:InverseCostTask",
    "stability": "bench.tasks.stability:StabilityTask",
    "logdet": "bench.tasks.logdet:LogdetTask",
    "cost": "bench.tasks.cost:CostTask",
    "exploding": "bench.tasks.exploding:ExplodingTask",
    "memgrad": "bench.tasks.memgrad:MemgradTask",
}


def _is_task_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Task)


tasks: Registry[type[Task]] = Registry(
    "task", ENTRY_POINT_GROUP, _TASKS, check=_is_task_class, want="a subclass of bench.tasks.base.Task",
    name_rule=(r"^[a-z][a-z0-9_]*$", "snake_case"), sort=False, hint="or pass 'module:TaskClass'")


#: study tasks that train their own models for one experiment (a paper's finding over training): run only by the
#: suites that name them, never by a suite that names no tasks
STUDY_TASKS: tuple[str, ...] = ("exploding", "memgrad")


def task_names() -> list[str]:
    """Every task name, in the order a suite runs them (training tasks first, then plug-ins)."""
    return tasks.names()


def default_task_names() -> list[str]:
    """The tasks of a suite that names none: every task but the :data:`STUDY_TASKS`."""
    return [t for t in task_names() if t not in STUDY_TASKS]


def get_task(name: str) -> type[Task]:
    """The task class for a name or a ``"module:TaskClass"`` string; unknown names raise ``KeyError``
    (:class:`models.registry.UnknownName`) with near matches."""
    return tasks.get(name)
