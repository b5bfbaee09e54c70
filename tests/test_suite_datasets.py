"""User arrays and loader options in suites and on the command line; support checked from data-set metadata.

The fake task and model are those of ``test_executors`` (loaded by ``"module:Class"``, as a user's would be).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_executors import FAKES, MODEL

from bench.cli import main
from bench.run.executors import InProcessExecutor
from bench.run.rundir import RESULTS, read_rows
from bench.run.runner import SupportCheck, run_suite
from bench.run.worker import CellSpec
from bench.suite import SuiteError, load_suite, restrict

ECHO, CLF = f"{FAKES}:EchoTask", f"{FAKES}:ClassifierEchoTask"


def _npz(path: Path, labels: bool = False, dtype: type = np.float32) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((16, 3)).astype(dtype), "x_test": rng.random((8, 3)).astype(dtype)}
    if labels:
        arrays.update(y_train=np.arange(16) % 2, y_test=np.arange(8) % 2)
    np.savez(path, **arrays)
    return path


def _suite(path: Path, datasets: str, tasks: str = f'"{ECHO}" = {{}}') -> Path:
    path.write_text(f'name = "t"\nseeds = 1\nmodels = ["{MODEL}"]\n{datasets}\n[budget]\nsteps = 1\n[tasks]\n{tasks}\n',
                    encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------- suite and CLI names
def test_command_line_accepts_every_form_of_a_data_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    suite = load_suite(str(_suite(tmp_path / "s.toml", 'datasets = ["moons"]')))
    names = [str(tmp_path / "x.npz"), "./x.npz", "x.npz", "sub/y.npy"]
    r = restrict(suite, datasets=names)
    assert [d.name for d in r.datasets] == names and all(d.options == {} for d in r.datasets)
    with pytest.raises(SuiteError, match=r"^--datasets: unknown data set 'moon'; did you mean moons\?"):
        restrict(suite, datasets=["moon"])


def test_suite_tables_of_data_files_with_loader_options(tmp_path: Path) -> None:
    path = str(tmp_path / "x.npz")
    suite = load_suite(str(_suite(tmp_path / "s.toml", f'[datasets."{path}"]\nlevels = 256\nn_train = 8\n'
                                                       '[datasets."rel/y.npy"]\n[datasets.moons]\nnoise = 0.2\n')))
    assert [(d.name, d.options) for d in suite.datasets] == [(path, {"levels": 256, "n_train": 8}),
                                                              ("rel/y.npy", {}), ("moons", {"noise": 0.2})]
    listed = load_suite(str(_suite(tmp_path / "l.toml", 'datasets = ["x.npz", { name = "./y.npy", levels = 4 }]')))
    assert [(d.name, d.options) for d in listed.datasets] == [("x.npz", {}), ("./y.npy", {"levels": 4})]


@pytest.mark.parametrize(("table", "expected"), [
    ('[datasets."/abs/x.npz"]\nlevel = 256\n',
     "suite s.toml: datasets.\"/abs/x.npz\": unknown option 'level'; did you mean levels? (options: n_train, n_test, "
     "preprocess, alpha, levels)"),
    ('[datasets."x.npz"]\nlevels = 1\n', 'suite s.toml: datasets."x.npz".levels: must be >= 2, got 1'),
    ("[datasets.moons]\nnois = 0.1\n", "suite s.toml: datasets.moons: unknown option 'nois'; did you mean noise?"),
    ("[datasets.moons]\nnoise = 0\n", "suite s.toml: datasets.moons.noise: must be > 0 for moons"),
    ("[datasets.digits]\nnoise = 0.1\n", "suite s.toml: datasets.digits: unknown option 'noise' (options: n_train,"),
    ("[datasets.digits]\nalpha = 0.1\n", "suite s.toml: datasets.digits: alpha only applies with preprocess = 'logit'"),
    ("[datasets.mnist]\nroot = 3\n", "suite s.toml: datasets.mnist.root: expected a string, got integer 3"),
    ('datasets = [{ name = "digits", preprocess = "logits" }]\n',
     "suite s.toml: datasets.digits.preprocess: expected one of none, logit, got 'logits'; did you mean logit?"),
])
def test_bad_loader_options_are_one_line_with_near_names(tmp_path: Path, table: str, expected: str) -> None:
    assert _error(_suite(tmp_path / "s.toml", table)).startswith(expected)


def test_unknown_data_set_name_in_a_suite(tmp_path: Path) -> None:
    message = _error(_suite(tmp_path / "s.toml", 'datasets = ["fashion_mnist"]'))
    assert message.startswith("suite s.toml: datasets[0]: unknown data set 'fashion_mnist'; did you mean fashion-mnist")
    assert "a path to a .npz/.npy file" in message


# ----------------------------------------------------------------------------------------------- runs
def test_a_suite_runs_on_a_user_file_and_the_cli_on_a_relative_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = _npz(tmp_path / "x.npz")
    suite = _suite(tmp_path / "s.toml", f'[datasets."{data}"]\nn_test = 4\n')
    run_suite(load_suite(str(suite)), tmp_path / "run", executor=InProcessExecutor())
    rows = list(read_rows(tmp_path / "run" / RESULTS))
    assert {(r.dataset, r.metric, r.status) for r in rows} == {(str(data), "loglik", "ok"), (str(data), "draw", "ok")}

    monkeypatch.chdir(tmp_path)
    other = _suite(tmp_path / "o.toml", 'datasets = ["moons"]')
    out = tmp_path / "cli"
    assert main(["run", "--suite", str(other), "--datasets", "./x.npz", "--out", str(out), "--executor", "inprocess",
                 "--quiet"]) == 0
    assert {r.dataset for r in read_rows(out / RESULTS)} == {"./x.npz"}


def test_data_set_problems_stop_the_run_before_any_compute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path / "ints.npz", dtype=np.uint8)
    suite = _suite(tmp_path / "s.toml", 'datasets = ["moons"]', tasks=f'"{ECHO}" = {{ log = "{tmp_path / "log"}" }}')
    for name, expected in [
        ("missing.npz", f"no such data file: {tmp_path / 'missing.npz'} (relative paths are resolved against the "
                        f"current directory {tmp_path})"),
        ("ints.npz", f"{tmp_path / 'ints.npz'}: x_train holds integers (uint8) but no levels are declared"),
    ]:
        out = tmp_path / f"run-{name}"
        assert main(["run", "--suite", str(suite), "--datasets", name, "--out", str(out), "--executor", "inprocess",
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
        assert "`levels = 256`" in err if name == "ints.npz" else True
        assert not out.exists() and not (tmp_path / "log").exists()  # nothing written, no task called


# ----------------------------------------------------------------------------------------------- support check
def _cell(dataset: str, task: str, options: dict[str, object] | None = None) -> CellSpec:
    return CellSpec(model=MODEL, dataset=dataset, seed=0, task=task, dataset_options=dict(options or {}))


def test_support_is_decided_from_metadata_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent reads headers (and streams a user file's inputs for NaN, without np.load): np.load, the IDX reader
    and the digits loader are never called."""
    from bench.datasets import digits, idx
    from bench.tasks.classification import ClassificationTask
    from bench.tasks.likelihood import LikelihoodTask
    from models.base import Capabilities

    plain, labelled = str(_npz(tmp_path / "p.npz")), str(_npz(tmp_path / "l.npz", labels=True))
    check = SupportCheck(seed=0)
    read: list[str] = []
    member = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda z, key: read.append(key) or member(z, key))
    info = check.dataset(_cell(labelled, ECHO))
    assert sorted(read) == ["y_test", "y_train"]  # the labels (for num_classes), never the inputs

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the support check loaded data")

    for module, attr in ((np, "load"), (idx, "read_idx"), (digits, "_raw")):
        monkeypatch.setattr(module, attr, no_reading)
    assert check(_cell(plain, ECHO)) == ("run", "")
    assert check(_cell(plain, CLF)) == ("unsupported", "a classifier")
    assert check(_cell("digits", ECHO, {"n_train": 10})) == ("run", "")
    assert (info.kind, info.shape, info.num_classes, info.levels, info.dim) == ("vector", (3,), 2, None, 3)
    classifier = Capabilities(density=False, classifier=True, inputs=("vector",))
    assert ClassificationTask.supports(classifier, info)
    assert not ClassificationTask.supports(classifier, check.dataset(_cell(plain, ECHO)))
    assert not LikelihoodTask.supports(classifier, info) and LikelihoodTask.supports(Capabilities(), info)
    with pytest.raises(ValueError, match=r"data set 'mnist': FileNotFoundError: mnist: no folder holds .* looked in: "
                                         f"{tmp_path / 'none'}"):
        check(_cell("mnist", ECHO, {"root": str(tmp_path / "none")}))


def nan_loader(seed: int = 0) -> Any:
    """A plug-in loader whose training inputs hold a NaN in row 3."""
    import torch

    from bench.datasets import Dataset

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
    x[3, 1] = float("nan")
    return Dataset(name="nan", kind="vector", train_x=x, test_x=torch.randn(4, 2))


def test_a_plug_in_loader_with_nan_inputs_stops_the_run_before_compute(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite(tmp_path / "s.toml", 'datasets = ["test_suite_datasets:nan_loader"]')
    assert main(["run", "--suite", str(suite), "--out", str(tmp_path / "o"), "--executor", "inprocess"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "returned train_x with NaN or infinite values, the first in row 3" in err, err
    assert not (tmp_path / "o").exists()
