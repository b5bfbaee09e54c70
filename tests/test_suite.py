"""Suite files: parsing, per-data-set budgets and hyper-parameters, one-line errors with near matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.suite import Known, SuiteError, bundled_suites, load_suite, read_suite_text, restrict
from bench.tasks.base import Budget

LINEAR = "models.template:LinearFlow"
DATASETS = ["gaussians8", "checkerboard", "moons", "spirals", "rings", "digits", "digits-flat", "fashion-mnist",
            "mnist", "cifar10"]
KNOWN = Known(models=lambda: ["maf-nflows", "realnvp-freia", "realnvp-nflows"],
              tasks=lambda: ["likelihood", "classification", "inverse_cost", "stability", "logdet", "cost"],
              datasets=lambda: DATASETS)


def load_text(tmp_path: Path, text: str, name: str = "s.toml", known: Known = KNOWN):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_suite(str(path), known)


FULL = f"""
name = "full"
description = "every feature"
seeds = [3, 7]
timeout = 60
device = "cpu"

[budget]
steps = 100
lr = 0.01

[models.all]
[models."{LINEAR}"]
seed = 1

[datasets.moons]
n_train = 100
budget = {{ steps = 5, seconds = 2.5 }}
models."{LINEAR}" = {{ seed = 2 }}

[datasets.digits]

[tasks]
inverse_cost = {{}}
stability = {{ regularizer = {{ eps = 0.01, weight = 1.0 }}, ood_dataset = "digits" }}
classification = {{}}
likelihood = {{}}

[slurm]
partition = "gpu"
gpus_per_node = 1
"""


def test_full_suite(tmp_path: Path) -> None:
    s = load_text(tmp_path, FULL)
    assert s.name == "full" and s.description == "every feature" and s.source == "s.toml"
    assert s.models == ["maf-nflows", "realnvp-freia", "realnvp-nflows", LINEAR], "'all' expands in place"
    assert s.seeds == [3, 7] and s.timeout == 60.0 and s.device == "cpu"
    assert [d.name for d in s.datasets] == ["moons", "digits"]
    assert s.dataset("moons").options == {"n_train": 100}
    assert s.budget_for("moons") == Budget(steps=5, seconds=2.5, batch_size=256, lr=0.01)
    assert s.budget_for("digits") == Budget(steps=100, seconds=None, batch_size=256, lr=0.01)
    assert s.hparams_for(LINEAR, "moons") == {"seed": 2} and s.hparams_for(LINEAR, "digits") == {"seed": 1}
    assert s.hparams_for("maf-nflows", "moons") == {}
    assert s.options_for("stability") == {"regularizer": {"eps": 0.01, "weight": 1.0}, "ood_dataset": "digits"}
    assert s.ordered_tasks() == ["classification", "likelihood", "inverse_cost", "stability"]
    assert s.slurm == {"partition": "gpu", "gpus_per_node": 1}


def test_lists_and_defaults(tmp_path: Path) -> None:
    s = load_text(tmp_path, 'datasets = ["moons", { name = "digits", n_test = 50 }]\nseeds = 3\n')
    assert s.name == "s" and s.seeds == [0, 1, 2] and s.models == ["maf-nflows", "realnvp-freia", "realnvp-nflows"]
    assert s.tasks == KNOWN.tasks() and s.budget == Budget() and s.timeout is None and s.device == "auto"
    assert s.dataset("digits").options == {"n_test": 50}


ERRORS = [
    ("datasets = ['moons']\ntasks = ['likelihood', 'classification', 'stabilty']\n",
     "suite quick.toml: tasks[2]: unknown task 'stabilty'; did you mean stability?"),
    ("datasets = ['moon']\n", "suite quick.toml: datasets[0]: unknown data set 'moon'; did you mean moons?"),
    ("datasets = ['moons']\nmodels = ['maf-nflows', 'realnvp-nflow']\n",
     "suite quick.toml: models[1]: unknown model 'realnvp-nflow'; did you mean realnvp-nflows, realnvp-freia"),
    ("datasets = ['moons'\n", "suite quick.toml: invalid TOML: "),
    ("datasets = ['moons']\nseeds = 0\n", "suite quick.toml: seeds: need at least one seed, got 0"),
    ("datasets = ['moons']\nseeds = [1, 1]\n", "suite quick.toml: seeds: duplicate seeds in [1, 1]"),
    ("datasets = ['moons']\nseeds = true\n", "suite quick.toml: seeds: expected a seed count or an array of seeds, "
     "got boolean True"),
    ("datasets = ['moons']\n[budget]\nstps = 3\n", "suite quick.toml: budget.stps: unknown budget field 'stps'; "
     "did you mean steps?"),
    ("datasets = ['moons']\n[budget]\nsteps = -1\n", "suite quick.toml: budget.steps: must be >= 0"),
    ("datasets = ['moons']\n[budget]\nlr = 'big'\n", "suite quick.toml: budget.lr: expected a positive number, "
     "got string 'big'"),
    ("datasets = ['moons']\ndevice = 'gpu'\n", "suite quick.toml: device: expected one of auto, cpu, cuda, got 'gpu'"),
    ("seeds = 1\n", "suite quick.toml: datasets: missing"),
    ("datasets = ['moons']\nmodels = 'all'\n", "suite quick.toml: models: expected an array of names or a table, "
     "got string 'all'"),
    ("datasets = ['moons']\nmodels = ['maf-nflows', 'maf-nflows']\n",
     "suite quick.toml: models[1]: 'maf-nflows' is listed twice"),
    ("datasets = ['moons']\n[models.all]\ndepth = 3\n",
     "suite quick.toml: models.all: 'all' takes no hyper-parameters"),
    (f"datasets = ['moons']\n[models.\"{LINEAR}\"]\nsed = 1\n", f'suite quick.toml: models."{LINEAR}".sed: unknown '
     f"hyper-parameter of {LINEAR}; did you mean seed?"),
    (f"[datasets.moons]\nmodels.\"{LINEAR}\" = {{ sed = 1 }}\n", f'datasets.moons.models."{LINEAR}".sed: unknown '
     "hyper-parameter"),
    (f"datasets = ['moons']\nmodels = ['{LINEAR}']\n[hparams.\"{LINEAR}\"]\nsed = 1\n",
     f'suite quick.toml: hparams."{LINEAR}".sed: unknown hyper-parameter of {LINEAR}; did you mean seed?'),
    (f"datasets = ['moons']\nmodels = ['realnvp-nflows']\n[hparams.\"{LINEAR}\"]\nseed = 1\n",
     f'suite quick.toml: hparams."{LINEAR}": \'{LINEAR}\' is not one of the suite\'s models'),
    (f"datasets = ['moons']\n[models.\"{LINEAR}\"]\nseed = 1\n[hparams.\"{LINEAR}\"]\nseed = 2\n",
     f'suite quick.toml: hparams."{LINEAR}": hyper-parameters of \'{LINEAR}\' are also given'),
    ("[datasets.moons]\nmodels.realnvp-nflows = { depth = 2.5 }\n",
     "suite quick.toml: datasets.moons.models.realnvp-nflows.depth: expected an integer, got float 2.5"),
    ("datasets = ['moons']\nmodels = ['realnvp-freia']\n[hparams.realnvp-freia]\nclamp = '2'\n",
     "suite quick.toml: hparams.realnvp-freia.clamp: expected a number, got string '2'"),
    ("datasets = ['moons']\nmodels = ['realnvp-freia']\n[hparams.realnvp-freia]\nclamp = nan\n",
     "suite quick.toml: hparams.realnvp-freia.clamp: expected a finite number, got nan"),
    (f"datasets = ['moons']\n[models.\"{LINEAR}\"]\nseed = true\n",
     f'suite quick.toml: models."{LINEAR}".seed: expected an integer, got boolean True'),
    ("[datasets.moons]\nbudget = { step = 3 }\n", "suite quick.toml: datasets.moons.budget.step: unknown budget field"),
    ("datasets = [{ n_train = 3 }]\n", "suite quick.toml: datasets[0]: an inline table needs a 'name'"),
    ("datasets = ['moons']\ntimout = 5\n", "suite quick.toml: timout: unknown field; did you mean timeout?"),
    ("datasets = ['moons']\ntimeout = 0\n", "suite quick.toml: timeout: must be positive, got 0"),
    ("datasets = ['moons']\n[slurm]\npartitoin = 'a'\n", "suite quick.toml: slurm.partitoin: unknown field; "
     "did you mean partition"),
    (f"datasets = ['moons']\ntasks = ['{LINEAR}']\n", f"suite quick.toml: tasks[0]: '{LINEAR}' is not a subclass of "
     "bench.tasks.base.Task"),
    ("datasets = ['moons']\ntasks = ['no_such_module_xyz:Task']\n", "suite quick.toml: tasks[0]: cannot import task "
     "'no_such_module_xyz:Task': No module named 'no_such_module_xyz'"),
    ("datasets = ['bench.suite:no_such_loader']\n", "suite quick.toml: datasets[0]: data set "
     "'bench.suite:no_such_loader' not found"),
    ("datasets = ['moons']\nmodels = ['bench.suite:Suite']\n", "suite quick.toml: models[0]: 'bench.suite:Suite' is "
     "not a subclass of models.base.InvertibleModel"),
    ("name = 'a b'\ndatasets = ['moons']\n", "suite quick.toml: name: use letters, digits"),
    ("datasets = ['moons']\nmatch_params = 0\n",
     "suite quick.toml: match_params: must be a positive number of parameters, got 0"),
    ("datasets = ['moons']\nmatch_params = 2.5e4\n",
     "suite quick.toml: match_params: expected a positive integer (trainable parameters per model), got float 25000.0"),
    ("datasets = ['moons']\nmatch_params = true\n", "suite quick.toml: match_params: expected a positive integer"),
    ("[datasets.moons]\ntargets = { kl_gp = 0.2 }\n", "suite quick.toml: datasets.moons.targets.kl_gp: 'kl_gp' is not "
     "a metric with a time_to_target in the tasks run on moons; did you mean kl_gap?"),
    ("[datasets.moons]\ntasks = ['cost']\ntargets = { kl_gap = 0.2 }\n", "suite quick.toml: datasets.moons.targets."
     "kl_gap: 'kl_gap' is not a metric with a time_to_target in the tasks run on moons (no task run on it "
     "reports time_to_target)"),
    ("[datasets.moons]\ntargets = { kl_gap = 'low' }\n",
     "suite quick.toml: datasets.moons.targets.kl_gap: expected a number, got string 'low'"),
    ("[datasets.moons]\ntargets = { kl_gap = nan }\n", "suite quick.toml: datasets.moons.targets.kl_gap: must be "
     "finite, got nan"),
    ("[datasets.moons]\ntargets = { train_time = 3 }\n", "suite quick.toml: datasets.moons.targets.train_time: "
     "'train_time' is not a metric with a time_to_target"),
    ("[datasets.moons]\ntargets = { recon_err = 1e-3 }\n", "suite quick.toml: datasets.moons.targets.recon_err: "
     "'recon_err' is not a metric with a time_to_target in the tasks run on moons (metrics with a time_to_target: "
     "kl_gap, test_accuracy, test_bpd, test_nll)"),
    ("[datasets.moons]\ntargets = 0.2\n", "suite quick.toml: datasets.moons.targets: expected a table metric -> "
     "threshold"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_are_one_line_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SuiteError) as info:
        load_text(tmp_path, text, name="quick.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected) if expected.startswith("suite ") else expected in message, message


def test_hyper_parameter_choices_are_checked_with_near_names(tmp_path: Path) -> None:
    known = Known(models=lambda: ["iresnet-native"], tasks=KNOWN.tasks, datasets=KNOWN.datasets)
    with pytest.raises(SuiteError) as info:
        load_text(tmp_path, "datasets = ['moons']\n[models.iresnet-native]\nsolver = 'andersen'\n", known=known)
    assert str(info.value) == ("suite s.toml: models.iresnet-native.solver: expected one of fixed_point, anderson, "
                               "newton, auto, got 'andersen'; did you mean anderson?")
    suite = load_text(tmp_path, "datasets = ['moons']\n[models.iresnet-native]\nsolver = 'anderson'\ncoeff = 1\n"
                      "sn_tol = 1e-3\n", known=known)
    assert suite.hparams_for("iresnet-native", "moons") == {"solver": "anderson", "coeff": 1, "sn_tol": 1e-3}


def test_bundled_suites(tmp_path: Path) -> None:
    from bench.tasks.registry import default_task_names, task_names
    from models.registry import names

    assert {"fashion", "fashion-short", "libraries", "paper", "quick"} <= set(bundled_suites())
    real = Known(models=names, tasks=task_names, datasets=lambda: DATASETS)
    quick = load_suite("quick", real)
    assert set(quick.models) < set(names()) and quick.tasks == default_task_names() and len(quick.seeds) == 2
    # every registered model is in the quick suite or in the libraries / exploding suites
    covered = {m for suite in ("quick", "libraries", "exploding") if suite in bundled_suites()
               for m in load_suite(suite, real).models}
    assert covered == set(names()), sorted(set(names()) - covered)
    assert {"gaussians8", "checkerboard", "moons", "spirals", "digits-flat"} <= {d.name for d in quick.datasets}
    from bench.tasks.stability import StabilityOptions, StabilityTask

    stability = StabilityTask.parse_options(quick.options_for("stability"), "quick")
    assert isinstance(stability, StabilityOptions)
    assert quick.timeout is not None and stability.regularizer is not None and stability.regularizer.eps == 0.1
    fashion = load_suite("fashion", real)
    assert [d.name for d in fashion.datasets] == ["fashion-mnist"] and fashion.budget.steps > quick.budget.steps
    short = load_suite("fashion-short", real)
    assert [d.name for d in short.datasets] == ["fashion-mnist"] and set(short.models) <= set(names())
    assert short.budget.seconds is not None and len(short.seeds) == 1
    paper = load_suite("paper", real)
    assert paper.device == "cuda" and {d.name for d in paper.datasets} == {"mnist", "cifar10"}
    assert paper.hparams_for("iresnet-native", "mnist")["coeff"] == 0.9
    assert paper.hparams_for("resflow-native", "cifar10")["coeff"] == 0.98
    assert paper.hparams_for("resflow-native", "cifar10")["inverse_tol"] == 1e-5
    text, source = read_suite_text("quick")
    assert source == "quick.toml" and "[budget]" in text


def test_suite_lookup_errors(tmp_path: Path) -> None:
    bundled = (r"\(bundled: exploding, exploding-fashion, fashion, fashion-short, gpu-check, libraries, paper, "
               r"paper-inverse, quick, quick-gpu; ")
    with pytest.raises(SuiteError, match=r"^unknown suite 'quik'; did you mean quick, quick-gpu\? " + bundled):
        load_suite("quik", KNOWN)
    with pytest.raises(FileNotFoundError, match="suite file not found"):
        load_suite(str(tmp_path / "missing.toml"), KNOWN)


def test_command_line_restrictions(tmp_path: Path) -> None:
    s = load_text(tmp_path, FULL)
    r = restrict(s, models=["realnvp-nflows"], tasks=["likelihood"], datasets=["digits", "rings"], seeds=1,
                 timeout=5, device="cpu", known=KNOWN)
    assert r.models == ["realnvp-nflows"] and r.tasks == ["likelihood"] and r.seeds == [0] and r.timeout == 5.0
    assert [d.name for d in r.datasets] == ["digits", "rings"] and r.dataset("rings").options == {}
    assert r.budget_for("rings") == s.budget
    for kw, message in [({"models": ["realnvp-nflow"]}, "--models: unknown model 'realnvp-nflow'; did you mean "),
                        ({"tasks": ["likelihod"]}, "--tasks: unknown task 'likelihod'; did you mean likelihood?"),
                        ({"datasets": ["ring"]}, "--datasets: unknown data set 'ring'; did you mean rings?"),
                        ({"seeds": 0}, "--seeds: need at least one seed, got 0")]:
        with pytest.raises(SuiteError) as info:
            restrict(s, known=KNOWN, **kw)  # type: ignore[arg-type]
        assert str(info.value).startswith(message), str(info.value)


def test_command_line_names_may_be_separated_by_commas(tmp_path: Path) -> None:
    s = load_text(tmp_path, FULL)
    odd = tmp_path / "a,b.npz"
    odd.write_bytes(b"")
    r = restrict(s, models=["realnvp-nflows,maf-nflows"], tasks=["likelihood,", "cost"],
                 datasets=["digits,rings", str(odd)], known=KNOWN)
    assert r.models == ["realnvp-nflows", "maf-nflows"] and r.tasks == ["likelihood", "cost"]
    assert [d.name for d in r.datasets] == ["digits", "rings", str(odd)]  # an existing path is kept whole
    with pytest.raises(SuiteError, match="--models: unknown model 'realnvp-nflow'"):
        restrict(s, models=["maf-nflows,realnvp-nflow"], known=KNOWN)


def test_per_dataset_task_subset_limits_the_plan(tmp_path: Path) -> None:
    from bench.run.runner import plan

    s = load_text(tmp_path, f"""
models = ["{LINEAR}"]
tasks = ["likelihood", "classification", "inverse_cost"]
[datasets.moons]
tasks = ["likelihood", "inverse_cost"]
[datasets.digits]
""")
    assert s.dataset("moons").tasks == ["likelihood", "inverse_cost"] and s.dataset("digits").tasks is None
    groups = plan(s, run_id="r", out=tmp_path, device="cpu")
    by_dataset = {g[0].dataset: [c.task for c in g] for g in groups}
    assert by_dataset == {"moons": ["likelihood", "inverse_cost"],
                          "digits": ["likelihood", "classification", "inverse_cost"]}
    with pytest.raises(SuiteError, match=r"datasets\.moons\.tasks\[0\]: 'stabilty' is not one of the suite's tasks"):
        load_text(tmp_path, f"""
models = ["{LINEAR}"]
tasks = ["likelihood", "stability"]
[datasets.moons]
tasks = ["stabilty"]
""")


def test_budget_schedule_is_validated(tmp_path: Path) -> None:
    s = load_text(tmp_path, f'models = ["{LINEAR}"]\ndatasets = ["moons"]\n[budget]\nschedule = "cosine"\n')
    assert s.budget.schedule == "cosine"
    with pytest.raises(SuiteError, match=r"budget\.schedule: unknown schedule 'cosin'; did you mean cosine\?"):
        load_text(tmp_path, f'models = ["{LINEAR}"]\ndatasets = ["moons"]\n[budget]\nschedule = "cosin"\n')


def test_targets_and_match_params_are_read(tmp_path: Path) -> None:
    s = load_text(tmp_path, """
match_params = 20000
tasks = ["likelihood", "classification", "cost"]
[datasets.moons]
targets = { kl_gap = 0.2, test_nll = 2 }
[datasets.digits]
tasks = ["classification"]
targets = { test_accuracy = 0.9 }
""")
    assert s.match_params == 20000
    assert s.dataset("moons").targets == {"kl_gap": 0.2, "test_nll": 2.0}
    assert isinstance(s.dataset("moons").targets["test_nll"], float)
    assert s.dataset("digits").targets == {"test_accuracy": 0.9} and s.tasks_on("digits") == ["classification"]
    assert load_text(tmp_path, 'datasets = ["moons"]\n').match_params is None
