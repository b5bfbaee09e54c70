"""The bundled quick-gpu suite: the quick suite's models, data sets, tasks and seeds with GPU-sized batches and
compiled training steps; it loads and its task options validate (its sizing is unmeasured: see its comments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.suite import Known, SuiteError, load_suite, read_suite_text
from bench.tasks.classification import ClassificationOptions, ClassificationTask
from bench.tasks.likelihood import LikelihoodOptions, LikelihoodTask
from bench.tasks.registry import task_names
from models.registry import names

DATASETS = ["gaussians8", "checkerboard", "moons", "spirals", "rings", "digits", "digits-flat", "fashion-mnist",
            "mnist", "cifar10"]


def known() -> Known:
    return Known(models=names, tasks=task_names, datasets=lambda: DATASETS)


def test_quick_gpu_holds_the_quick_suite_with_gpu_sized_budgets() -> None:
    quick, gpu = load_suite("quick", known()), load_suite("quick-gpu", known())
    assert gpu.models == quick.models and gpu.tasks == quick.tasks and gpu.seeds == quick.seeds
    assert [d.name for d in gpu.datasets] == [d.name for d in quick.datasets]
    assert gpu.device == "cuda" and gpu.budget.batch_size > quick.budget.batch_size
    assert gpu.budget.seconds == quick.budget.seconds and gpu.budget.steps > quick.budget.steps
    for dq, dg in zip(quick.datasets, gpu.datasets, strict=True):
        assert dg.targets == dq.targets and quick.hparams_for("iresnet-native", dq.name) == gpu.hparams_for(
            "iresnet-native", dg.name)
    for task in (LikelihoodTask, ClassificationTask):
        gpu_options = task.parse_options(gpu.options_for(task.name), "quick-gpu")
        quick_options = task.parse_options(quick.options_for(task.name), "quick")
        assert isinstance(gpu_options, LikelihoodOptions | ClassificationOptions)
        assert isinstance(quick_options, LikelihoodOptions | ClassificationOptions)
        assert gpu_options.compile == "reduce-overhead" and quick_options.compile == "off"
    text, _ = read_suite_text("quick-gpu")
    assert "UNMEASURED" in text


def test_a_bad_compile_mode_in_the_suite_fails_at_load(tmp_path: Path) -> None:
    text, _ = read_suite_text("quick-gpu")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('likelihood = { compile = "reduce-overhead" }', 'likelihood = { compile = "cuda" }'))
    with pytest.raises(SuiteError) as err:
        load_suite(str(bad), known())
    message = str(err.value)
    assert "\n" not in message and "tasks.likelihood.compile: expected one of off, default, reduce-overhead" in message


def test_gpu_check_suite_and_script_name_what_exists() -> None:
    """bench/suites/gpu-check.toml holds the estimator models on Fashion-MNIST with the likelihood and stability
    tasks and no regularised twin (so a stability cell's seconds are its measurements); the script's digits models
    are in both quick suites, and it parses as bash."""
    import re
    import shutil
    import subprocess

    from bench.tasks.stability import StabilityOptions, StabilityTask
    from models.registry import get

    check = load_suite("gpu-check", known())
    assert [d.name for d in check.datasets] == ["fashion-mnist"] and check.device == "cuda"
    assert check.tasks == ["likelihood", "stability"] and len(check.seeds) == 1
    assert all(get(m).capabilities.logdet == "estimator" for m in check.models)
    stability = StabilityTask.parse_options(check.options_for("stability"), "gpu-check")
    assert isinstance(stability, StabilityOptions) and stability.regularizer is None
    script = Path(__file__).resolve().parents[1] / "bench" / "suites" / "gpu-check.sh"
    text = script.read_text()
    match = re.search(r'^MODELS="([^"]+)"', text, flags=re.MULTILINE)
    assert match is not None
    quick, gpu = load_suite("quick", known()), load_suite("quick-gpu", known())
    for model in match.group(1).split():
        assert model in quick.models and model in gpu.models, model
    assert "--suite quick " in text and "--suite quick-gpu " in text and "gpu-check.toml" in text
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(script)], check=True)
