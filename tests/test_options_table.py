"""The README's task-options table is the one generated from the tasks' Options dataclasses and metric specs."""

from __future__ import annotations

from pathlib import Path

from bench.tasks.options_table import current_block, options_markdown, readme_block
from bench.tasks.registry import get_task, task_names

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_matches_the_dataclasses() -> None:
    block = current_block(README.read_text(encoding="utf-8"))
    assert block, "README.md lacks the generated task-options block"
    assert block == readme_block(), "README.md is out of date: run `python -m bench.tasks.options_table`"


def test_every_option_and_metric_is_in_the_table() -> None:
    text = options_markdown()
    for name in task_names():
        task = get_task(name)
        for option, *_ in task.Options.describe():
            assert f"| `{option}` |" in text
        assert task.metric_specs, f"task {name} declares no metrics"
        for spec in task.metric_specs:
            assert f"| `{spec.name}` |" in text
            assert spec.help, f"{name}.{spec.name} has no one-line meaning"
