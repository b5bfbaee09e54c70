"""The training loss through ``torch.compile`` (bench.tasks.compiled): compiled where the model allows it, an eager
fallback with its reason recorded where not, the same loss as eager on the same batch, the option validated at
suite load and the checkpoint reused only for the same compile request."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch import Tensor

from bench.datasets.base import Dataset
from bench.options import OptionError
from bench.tasks import training
from bench.tasks.base import Budget, TaskContext
from bench.tasks.compiled import CompiledStep, first_line
from bench.tasks.likelihood import LikelihoodTask
from bench.tasks.training import train_classifier, train_likelihood, train_metrics, trained_model
from models.template import LinearFlow

CPU = torch.device("cpu")


def vectors(n: int = 128, d: int = 3, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, d, generator=g) * torch.tensor([1.0, 2.0, 0.5])[:d]
    y = (x[:, 0] > 0).long()
    return Dataset(name=f"vec{d}", kind="vector", train_x=x[:n], test_x=x[n:], train_y=y[:n], test_y=y[n:],
                   num_classes=2)


class BreakingFlow(LinearFlow):
    """A linear flow whose ``log_prob`` forces a dynamo graph break: it compiles in pieces, and fails with
    ``fullgraph = True``."""

    def log_prob(self, x: Tensor) -> Tensor:
        torch._dynamo.graph_break()
        return super().log_prob(x)


class DeclaredFlow(LinearFlow):
    """A linear flow that declares it cannot be compiled."""

    compile_unsupported = "declared by the test"


class ClassifyingFlow(LinearFlow):
    """A linear flow with a linear head on z, so the classification loop has logits."""

    capabilities = LinearFlow.capabilities.__class__(density=True, classifier=True, inputs=("vector",))

    def __init__(self, shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.head = torch.nn.Linear(self.dim, num_classes or 2)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.encode(x))


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()


def frames_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_a_model_that_compiles_trains_compiled_and_records_it() -> None:
    torch.manual_seed(0)
    model, before = LinearFlow((3,)), frames_compiled()
    result = train_likelihood(model, vectors(), Budget(steps=4, batch_size=32, lr=1e-2), CPU, seed=0,
                              compile="default")
    record = result.compile
    assert frames_compiled() > before  # dynamo really built a graph
    assert (record.requested, record.used, record.fallback_error, record.cuda_graphs) == ("default", "default", "",
                                                                                          False)
    assert result.steps == 4 and math.isfinite(result.final_loss) and record.compile_seconds > 0
    time_row, steps_row = train_metrics(result)
    for row in (time_row, steps_row):
        assert row.extra["compile"]["used"] == "default" and row.extra["compile"]["requested"] == "default"
    assert time_row.extra["compile"]["compile_seconds"] == record.compile_seconds


def test_the_compiled_loss_and_gradients_equal_the_eager_ones_on_the_same_batch() -> None:
    data = vectors()
    y, ldj = data.train_x[:64], torch.zeros(64)
    losses, grads = [], []
    for mode in ("off", "default"):
        model = LinearFlow((3,), seed=4)
        model.train()
        step = CompiledStep(model, "likelihood", mode, CPU)
        losses.append(step.step(y, ldj, None, lambda: None))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        assert step.record.used == mode
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_a_forced_graph_break_with_fullgraph_falls_back_to_eager_with_the_reason() -> None:
    budget = Budget(steps=5, batch_size=32, lr=1e-2)
    torch.manual_seed(0)
    model = BreakingFlow((3,))
    result = train_likelihood(model, vectors(), budget, CPU, seed=0, compile="default", compile_fullgraph=True)
    record = result.compile
    assert (record.requested, record.used, record.fullgraph) == ("default", "off", True) and record.fell_back
    assert record.fallback_error and record.fallback_error != "declared"
    assert record.fallback_reason and "\n" not in record.fallback_reason
    # the fallback re-runs the first step from the same random state: the weights are those of eager training
    torch.manual_seed(0)
    eager = BreakingFlow((3,))
    train_likelihood(eager, vectors(), budget, CPU, seed=0)
    for a, b in zip(model.parameters(), eager.parameters(), strict=True):
        assert torch.equal(a, b)


# dynamo, resuming after the graph break, reads .grad of a non-leaf tensor and torch warns (an error under pytest)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_without_fullgraph_the_graph_break_splits_the_graph_and_stays_compiled() -> None:
    result = train_likelihood(BreakingFlow((3,)), vectors(), Budget(steps=2, batch_size=32), CPU, seed=0,
                              compile="reduce-overhead")
    assert result.compile.used == "reduce-overhead", result.compile.fallback_reason
    assert not result.compile.cuda_graphs  # CPU: no CUDA graphs


def test_the_classifier_compiles_and_a_declared_model_runs_eagerly_and_says_why() -> None:
    result = train_classifier(ClassifyingFlow((3,), 2), vectors(), Budget(steps=2, batch_size=32), CPU, seed=0,
                              compile="default")
    assert (result.compile.used, result.compile.fallback_error) == ("default", "")  # the classifier compiles
    declared = train_likelihood(DeclaredFlow((3,)), vectors(), Budget(steps=2, batch_size=32), CPU, seed=0,
                                compile="default")
    record = declared.compile
    assert (record.used, record.fallback_error, record.fallback_reason) == ("off", "declared", "declared by the test")
    assert record.compile_seconds == 0.0


def test_an_error_of_the_compiled_step_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, **kwargs: object) -> object:
        def raises(*args: object) -> Tensor:
            raise RuntimeError("backend failed\nsecond line")

        return raises

    monkeypatch.setattr(torch, "compile", broken)
    result = train_likelihood(LinearFlow((3,)), vectors(), Budget(steps=3, batch_size=32), CPU, seed=0,
                              compile="default")
    assert (result.compile.used, result.compile.fallback_error, result.compile.fallback_reason) == (
        "off", "RuntimeError", "backend failed")
    assert result.steps == 3


def test_first_line_skips_blank_lines() -> None:
    assert first_line(ValueError("\n  boom  \nmore")) == "boom" and first_line(KeyError()) == "KeyError"


def test_the_compile_option_is_validated_at_suite_load() -> None:
    with pytest.raises(OptionError) as err:
        LikelihoodTask.parse_options({"compile": "reduce_overhead"}, "tasks.likelihood")
    message = str(err.value)
    assert "\n" not in message and message.startswith("tasks.likelihood.compile: expected one of off, default, "
                                                      "reduce-overhead")
    assert "did you mean reduce-overhead" in message
    assert LikelihoodTask.parse_options({"compile": "default"}, "t").compile == "default"  # type: ignore[attr-defined]


def test_a_training_task_reuses_a_checkpoint_only_for_the_same_compile_request(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    calls: list[str] = []
    real = training.train_likelihood

    def counted(*args: object, **kwargs: object) -> training.TrainResult:
        calls.append(str(args[8]) if len(args) > 8 else "off")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train_likelihood", counted)
    ctx = TaskContext(make_model=lambda: DeclaredFlow((3,)), dataset=vectors(), seed=0,
                      budget=Budget(steps=2, batch_size=32), device=CPU, checkpoint_dir=tmp_path, model_name="decl")
    trained_model(ctx, "likelihood", compile="off")
    trained_model(ctx, "likelihood", compile="off")  # reused
    _, result = trained_model(ctx, "likelihood", compile="default")  # another request: trained again
    assert result.compile.requested == "default" and result.compile.fallback_error == "declared"
    _, reused = trained_model(ctx, "likelihood")  # a measurement task reuses whatever was trained
    assert reused.compile.requested == "default"
    assert calls == ["off", "default"]


def test_a_compile_that_builds_no_graph_counts_as_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # "compiled" without dynamo: no graph
    result = train_likelihood(LinearFlow((3,)), vectors(), Budget(steps=2, batch_size=32), CPU, seed=0,
                              compile="default")
    assert (result.compile.used, result.compile.fallback_error) == ("off", "NoGraph")


def test_many_compiled_trainings_in_one_process_stay_compiled() -> None:
    import torch._dynamo.config

    # each model recompiles the same loss code; the config's own patch restores it (pytest's monkeypatch leaves the
    # option missing afterwards, which breaks every later compile in the process)
    with torch._dynamo.config.patch(recompile_limit=2):
        for seed in range(3):
            result = train_likelihood(LinearFlow((3,), seed=seed), vectors(), Budget(steps=2, batch_size=32), CPU,
                                      seed=0, compile="default")
            assert (result.compile.used, result.compile.fallback_error) == ("default", ""), seed


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_the_native_i_resnet_training_loss_traces_as_one_graph(shape: tuple[int, ...]) -> None:
    """dynamo traces the native i-ResNet's training loss (forward, log-det, loss) as one graph once its ActNorms are
    initialised: the ActNorm flag is a Python attribute (a read of its buffer would break the graph at every
    ActNorm). Tracing only (``torch._dynamo.explain``), no kernels compiled."""
    from models.loss import training_loss
    from models.registry import create

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create("iresnet-native", shape, depth=2, hidden=16)
    x = torch.randn(32, *shape)
    model.data_init(x)
    model.train()
    explained = torch._dynamo.explain(lambda t: training_loss(model, t, objective="likelihood"))(x)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
