"""Data sets: exact 2-D densities, digits, IDX / CIFAR readers on synthetic files, user arrays, logit pre-processing."""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import datasets
from bench.datasets import LogitTransform, cifar, idx, load, names, toy2d

TOY = list(toy2d.NAMES)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not see the machine's own data folders through environment variables."""
    for var in ("INVBENCH_DATA", "FASHION_MNIST_DIR", "MNIST_DIR", "CIFAR10_DIR"):
        monkeypatch.delenv(var, raising=False)


def _grid(half: float, step: float) -> tuple[torch.Tensor, float]:
    n = math.ceil(2 * half / step)
    h = 2 * half / n
    g = -half + (torch.arange(n, dtype=torch.float64) + 0.5) * h
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), h


# ----------------------------------------------------------------------------------------------- names


def test_names_and_unknown_name_lists_near_matches() -> None:
    assert set(TOY) | {"digits", "digits-flat", "fashion-mnist", "mnist", "cifar10"} <= set(names())
    with pytest.raises(KeyError, match="moons"):
        load("moon")
    with pytest.raises(KeyError, match="fashion-mnist"):
        load("fashion_mnist")


def test_unknown_option_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="noise"):
        load("moons", n_train=10, n_test=10, nois=0.1)
    with pytest.raises(ValueError, match="unknown option"):
        load("digits", noise=0.1)


# ----------------------------------------------------------------------------------------------- 2-D densities


@pytest.mark.parametrize("name", TOY)
def test_density_integrates_to_one_and_is_standardised(name: str) -> None:
    """Independent midpoint grid (not the module's quadrature): mass 1, mean 0, unit variance per coordinate."""
    ds = load(name, n_train=10, n_test=10)
    assert ds.log_density is not None
    pts, h = _grid(3.5, 0.04)
    p = ds.log_density(pts).exp()
    w = p * h * h
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-2)
    mean = (w[:, None] * pts).sum(0)
    var = (w[:, None] * (pts - mean) ** 2).sum(0)
    assert mean.abs().max() < 1e-4
    torch.testing.assert_close(var, torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", TOY)
def test_samples_mean_log_density_matches_minus_entropy(name: str) -> None:
    """The samples come from the density: E[-log p(x)] = H within 3 standard errors (no KDE involved)."""
    ds = load(name, seed=3, n_train=10, n_test=20_000)
    assert ds.log_density is not None and ds.entropy is not None
    nll = -ds.log_density(ds.test_x.double())
    se = float(nll.std()) / math.sqrt(len(nll))
    assert abs(float(nll.mean()) - ds.entropy) < 3 * se
    x = ds.test_x.double()
    assert x.mean(0).abs().max() < 4 / math.sqrt(len(x))
    assert ((x.var(0) - 1).abs() < 0.05).all()


@pytest.mark.parametrize("name", TOY)
def test_toy_sampling_is_seeded_and_splits_are_distinct(name: str) -> None:
    a = load(name, seed=1, n_train=300, n_test=200)
    b = load(name, seed=1, n_train=300, n_test=200)
    c = load(name, seed=2, n_train=300, n_test=200)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (300, 2) and a.test_x.shape == (200, 2) and a.kind == "vector"
    assert a.train_x.dtype == torch.float32 and a.levels is None
    assert torch.cdist(a.train_x, a.test_x).min() > 0
    assert a.log_density is not None
    out = a.log_density(a.test_x)
    assert out.shape == (200,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    if a.num_classes is not None:
        assert a.train_y is not None and a.test_y is not None
        assert set(a.train_y.unique().tolist()) == set(range(a.num_classes))


def test_gaussians8_entropy_matches_the_separated_mixture_formula() -> None:
    """Well-separated equal modes: H = ln 8 + ln(2 pi e s1 s2), checking the quadrature independently."""
    d = toy2d.density("gaussians8", 0.05)
    assert isinstance(d, toy2d.GaussianMixture2D)
    h, err, mass = toy2d.entropy("gaussians8", 0.05)
    s1, s2 = d.std.tolist()
    assert h == pytest.approx(math.log(8) + math.log(2 * math.pi * math.e * s1 * s2), abs=1e-6)
    assert err < 1e-4 and mass == pytest.approx(1.0, abs=1e-9)


def test_gaussians8_labels_are_the_generating_mode() -> None:
    ds = load("gaussians8", n_train=2000, n_test=10)
    d = toy2d.density("gaussians8")
    assert isinstance(d, toy2d.GaussianMixture2D) and ds.train_y is not None
    nearest = torch.cdist(ds.train_x.double(), d.centres).argmin(1)
    assert (nearest == ds.train_y).double().mean() > 0.999


def test_checkerboard_blur_entropy_tends_to_the_sharp_closed_form() -> None:
    sharp = load("checkerboard", n_train=1000, n_test=1000, noise=0.0)
    assert sharp.entropy is not None and sharp.log_density is not None
    d = toy2d.density("checkerboard", 0.0)
    assert isinstance(d, toy2d.Checkerboard2D)
    assert sharp.entropy == pytest.approx(math.log(8 * d.side**2), rel=1e-12)
    # every sample lies on a black cell, where the density is 1 / area; outside it is zero
    torch.testing.assert_close(sharp.log_density(sharp.test_x.double()),
                               torch.full((1000,), -sharp.entropy, dtype=torch.float64))
    assert sharp.log_density(torch.tensor([[0.5 * d.side, -0.5 * d.side]])).item() == -math.inf
    gaps = [toy2d.entropy("checkerboard", s)[0] - sharp.entropy for s in (0.05, 0.02)]
    assert 0 < gaps[1] < gaps[0] < 0.2


def test_checkerboard_log_density_is_finite_far_in_the_tails() -> None:
    d = toy2d.density("checkerboard")
    far = torch.tensor([[12.0, 0.0], [-9.0, 9.0], [0.0, -15.0]], dtype=torch.float64)
    lp = d(far)
    assert torch.isfinite(lp).all() and (lp < -30).all()


def test_bad_noise_is_rejected() -> None:
    with pytest.raises(ValueError):
        load("moons", n_train=10, n_test=10, noise=0.0)
    with pytest.raises(ValueError):
        load("rings", n_train=10, n_test=10, noise=-1.0)


# ----------------------------------------------------------------------------------------------- digits


def test_digits_split_levels_and_shapes() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load("digits")
    assert ds.kind == "image" and ds.shape == (1, 8, 8) and ds.levels == 17 and ds.num_classes == 10
    assert len(ds.train_x) + len(ds.test_x) == 1797 and len(ds.test_x) == 359
    tr, te = np.asarray(ds.meta["train_index"]), np.asarray(ds.meta["test_index"])
    assert not set(tr) & set(te) and len(set(tr) | set(te)) == 1797
    k = ds.train_x * 17
    torch.testing.assert_close(k, k.round(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(k.round().numpy()[:, 0].astype(int), ref.images[tr].astype(int))
    assert ds.train_y is not None and ds.test_y is not None
    np.testing.assert_array_equal(ds.test_y.numpy(), ref.target[te])
    # stratified: each class's share of the test split within one image of proportional
    counts = np.bincount(ref.target, minlength=10)
    test_counts = np.bincount(ds.test_y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 359 / 1797) <= 1)
    # the split is fixed: the run seed does not move it
    assert load("digits", seed=5).meta["test_index"] == ds.meta["test_index"]
    flat = load("digits-flat")
    assert flat.kind == "vector" and flat.shape == (64,)
    torch.testing.assert_close(flat.train_x, ds.train_x.reshape(-1, 64))


def test_digits_dequantisation_stays_in_the_level_cell() -> None:
    ds = load("digits-flat", n_train=200, n_test=50)
    assert len(ds.train_x) == 200 and len(ds.test_x) == 50
    x = ds.dequantize(ds.train_x, torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() < 1
    torch.testing.assert_close(torch.floor(x * 17), torch.round(ds.train_x * 17))
    full = load("digits-flat")
    assert set(np.asarray(ds.meta["train_index"])) <= set(np.asarray(full.meta["train_index"]))


# ----------------------------------------------------------------------------------------------- IDX


def _fake_mnist(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        idx.write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, dtype: str, gz: bool) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) * (3 if dtype != "int8" else 1)).astype(dtype)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    idx.write_idx(path, arr)
    back = idx.read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_reader_matches_the_format_byte_by_byte(tmp_path: Path) -> None:
    """Hand-written file: magic 0x00000803, sizes 2, 1, 3 big-endian, then 6 data bytes."""
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252])
    (tmp_path / "h").write_bytes(raw)
    (tmp_path / "h.gz").write_bytes(gzip.compress(raw))
    for name in ("h", "h.gz"):
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name), [[[1, 2, 3]], [[250, 251, 252]]])
    (tmp_path / "bad").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="bytes"):
        idx.read_idx(tmp_path / "bad")
    (tmp_path / "notidx").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX"):
        idx.read_idx(tmp_path / "notidx")


def test_fashion_mnist_from_torchvision_layout_gz(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load("fashion-mnist", root=str(tmp_path))
    assert ds.kind == "image" and ds.shape == (1, 28, 28) and ds.levels == 256 and ds.num_classes == 10
    assert len(ds.train_x) == 12 and len(ds.test_x) == 5
    np.testing.assert_array_equal((ds.test_x[:, 0] * 256).round().numpy().astype(np.uint8),
                                  arrays["t10k-images-idx3-ubyte"])
    assert ds.train_y is not None and ds.train_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    sub = load("fashion-mnist", root=str(tmp_path), n_train=4, n_test=3)
    assert len(sub.train_x) == 4 and len(sub.test_x) == 3


def test_mnist_raw_files_found_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _fake_mnist(tmp_path / "mnist-files", gz=False)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "mnist-files"))
    ds = load("mnist")
    assert ds.test_y is not None
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # INVBENCH_DATA with torchvision's layout comes before MNIST_DIR; an explicit root before both
    other = _fake_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True, seed=1)
    monkeypatch.setenv("INVBENCH_DATA", str(tmp_path / "data"))
    assert load("mnist").test_y.numpy().tolist() == other["t10k-labels-idx1-ubyte"].tolist()  # type: ignore[union-attr]
    first = _fake_mnist(tmp_path / "mine", gz=False, seed=2)
    got = load("mnist", root=str(tmp_path / "mine")).test_y
    assert got is not None and got.numpy().tolist() == first["t10k-labels-idx1-ubyte"].tolist()


def test_missing_fashion_mnist_names_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setitem(idx._SOURCES, "fashion-mnist",
                        dataclasses.replace(idx._SOURCES["fashion-mnist"], system_dir=str(system)))
    monkeypatch.setenv("INVBENCH_DATA", str(tmp_path / "env"))
    partial = tmp_path / "root"
    _fake_mnist(partial, gz=True)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files is not a data set
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", root=str(partial))
    msg = str(info.value)
    assert "\n" not in msg
    env = tmp_path / "env"
    for place in (partial, partial / "FashionMNIST" / "raw", env, env / "FashionMNIST" / "raw", system):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "INVBENCH_DATA" in msg


def test_default_system_folder_is_debians() -> None:
    assert idx._SOURCES["fashion-mnist"].system_dir == "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------------------------- CIFAR-10


def _fake_cifar(folder: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (*cifar.TRAIN_FILES, *cifar.TEST_FILES):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        out[name] = (data, labels)
    return out


def test_cifar10_from_torchvision_layout(tmp_path: Path) -> None:
    batches = _fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load("cifar10", root=str(tmp_path))
    assert ds.kind == "image" and ds.shape == (3, 32, 32) and ds.levels == 256 and ds.num_classes == 10
    assert len(ds.train_x) == 20 and len(ds.test_x) == 4
    data, labels = batches["test_batch"]
    k = (ds.test_x * 256).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(k[:, 0].reshape(4, -1), data[:, :1024])  # red plane first
    np.testing.assert_array_equal(k[:, 2, 31, 31], data[:, 3071])
    assert ds.test_y is not None and ds.test_y.tolist() == labels
    assert ds.train_y is not None and ds.train_y[:4].tolist() == batches["data_batch_1"][1]


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("side effect",))


def test_cifar_reader_refuses_pickles_that_call_code(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="print"):
        cifar.read_batch(path)


def test_missing_cifar10_names_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "c10"))
    with pytest.raises(FileNotFoundError) as info:
        load("cifar10", root=str(tmp_path / "r"))
    msg = str(info.value)
    for place in (tmp_path / "r", tmp_path / "r" / "cifar-10-batches-py", tmp_path / "c10"):
        assert str(place) in msg
    assert "download=True" in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------------- user arrays


def test_npz_with_levels_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    x_tr, x_te = rng.integers(0, 256, (30, 1, 4, 4)), rng.integers(0, 256, (10, 1, 4, 4))
    np.savez(path, x_train=x_tr, x_test=x_te, y_train=rng.integers(0, 3, 30), y_test=rng.integers(0, 3, 10),
             levels=256)
    ds = load(str(path))
    assert ds.kind == "image" and ds.shape == (1, 4, 4) and ds.levels == 256 and ds.num_classes == 3
    torch.testing.assert_close(ds.train_x, torch.from_numpy(x_tr).float() / 256)


def test_npz_continuous_vectors_and_hw_images(tmp_path: Path) -> None:
    np.savez(tmp_path / "v.npz", x_train=np.ones((5, 3)), x_test=np.zeros((2, 3)))
    v = load(str(tmp_path / "v.npz"))
    assert v.kind == "vector" and v.levels is None and v.train_y is None and v.num_classes is None
    np.savez(tmp_path / "hw.npz", x_train=np.ones((5, 6, 7)), x_test=np.zeros((2, 6, 7)))
    assert load(str(tmp_path / "hw.npz")).shape == (1, 6, 7)


def test_npz_errors_are_clear(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x_train=np.ones((5, 3)))
    with pytest.raises(ValueError, match="x_test"):
        load(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x_train=np.ones((5, 3)), x_test=np.ones((5, 4)))
    with pytest.raises(ValueError, match="shape"):
        load(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", x_train=np.ones((5, 3)), x_test=np.ones((5, 3)), y_train=np.zeros(4, int),
             y_test=np.zeros(5, int))
    with pytest.raises(ValueError, match="y_train"):
        load(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", x_train=np.full((5, 3), 0.5), x_test=np.ones((5, 3)), levels=17)
    with pytest.raises(ValueError, match="integer"):
        load(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "e.npz", x_train=np.ones(5), x_test=np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        load(str(tmp_path / "e.npz"))
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "nope.npz"))


def test_npy_is_split_80_20_disjoint_and_fixed(tmp_path: Path) -> None:
    x = np.arange(100 * 2, dtype=np.float64).reshape(100, 2)
    np.save(tmp_path / "x.npy", x)
    a, b = load(str(tmp_path / "x.npy"), seed=0), load(str(tmp_path / "x.npy"), seed=7)
    assert len(a.train_x) == 80 and len(a.test_x) == 20
    rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert not rows(a.train_x) & rows(a.test_x) and len(rows(a.train_x) | rows(a.test_x)) == 100
    assert torch.equal(a.test_x, b.test_x)


# ----------------------------------------------------------------------------------------------- logit


@pytest.mark.parametrize("shape", [(4,), (1, 2, 2)])
def test_logit_log_det_matches_autograd_slogdet(shape: tuple[int, ...]) -> None:
    t = LogitTransform(alpha=0.05)
    x = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, ladj = t(x)
    assert y.shape == x.shape and ladj.shape == (3,)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, *shape))[0].reshape(-1), x[i].reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign > 0
        torch.testing.assert_close(ladj[i], logabs)
    torch.testing.assert_close(t.inverse(y), x)


def test_logit_option_on_loaders() -> None:
    ds = load("digits-flat", n_train=20, n_test=10, preprocess="logit", alpha=0.01)
    assert isinstance(ds.preprocess, LogitTransform) and ds.preprocess.alpha == 0.01
    y, ladj = ds.preprocess(ds.dequantize(ds.train_x))
    assert torch.isfinite(y).all() and ladj.shape == (20,)
    assert load("digits", preprocess=None).preprocess is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load("moons", n_train=10, n_test=10, preprocess="logit")
    with pytest.raises(ValueError, match="preprocess"):
        load("digits", preprocess="whiten")
    with pytest.raises(ValueError):
        LogitTransform(alpha=0.5)


def test_datasets_pickle(tmp_path: Path) -> None:
    """Cells may run in subprocesses: a loaded data set, density and pre-processing included, must pickle."""
    ds = load("rings", n_train=50, n_test=50)
    back = pickle.loads(pickle.dumps(ds))
    assert back.log_density is not None and ds.log_density is not None
    torch.testing.assert_close(back.log_density(ds.test_x), ds.log_density(ds.test_x))
    lg = load("digits", n_train=5, n_test=5, preprocess="logit")
    assert pickle.loads(pickle.dumps(lg)).preprocess == lg.preprocess
    assert datasets.names() == names()


# ----------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", [*TOY, "digits", "digits-flat"])
def test_info_matches_the_loaded_data(name: str) -> None:
    assert datasets.info(name, {"n_train": 20, "n_test": 10}) == load(name, n_train=20, n_test=10).info


def test_info_of_file_data_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IDX, CIFAR-10 and digits metadata agree with the loaded data and are known without reading the arrays."""
    from bench.datasets import digits

    _fake_mnist(tmp_path / "m", gz=True)
    _fake_cifar(tmp_path / "c" / "cifar-10-batches-py")
    loaded = {"fashion-mnist": load("fashion-mnist", root=str(tmp_path / "m")).info,
              "cifar10": load("cifar10", root=str(tmp_path / "c")).info, "digits": load("digits").info}

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("info() read the arrays")

    monkeypatch.setattr(idx, "read_idx", no_reading)
    monkeypatch.setattr(cifar, "read_batch", no_reading)
    monkeypatch.setattr(digits, "_raw", no_reading)
    assert datasets.info("fashion-mnist", {"root": str(tmp_path / "m")}) == loaded["fashion-mnist"]
    assert datasets.info("cifar10", root=str(tmp_path / "c")) == loaded["cifar10"]
    assert datasets.info("digits") == loaded["digits"] == datasets.DatasetInfo("digits", "image", (1, 8, 8), 10, 17)
    with pytest.raises(ValueError, match="digits: n_train=2000 is out of range: the split holds 1438"):
        datasets.info("digits", {"n_train": 2000})
    with pytest.raises(ValueError, match="n_test=6 is out of range: the split holds 5"):
        datasets.info("fashion-mnist", {"root": str(tmp_path / "m"), "n_test": 6})


def test_info_of_missing_files_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"looked in: {tmp_path / 'nowhere'}"):
        datasets.info("mnist", {"root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=f"no such data file: {tmp_path / 'x.npz'}$"):
        datasets.info(str(tmp_path / "x.npz"))


def test_info_of_user_arrays_does_not_load_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata from the headers; the inputs are only streamed for the finiteness check, never loaded whole."""
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "img.npz", x_train=rng.random((30, 3, 4, 5)), x_test=rng.random((10, 3, 4, 5)))
    np.save(tmp_path / "v.npy", rng.random((50, 6)).astype(np.float32))
    expected = {p: load(str(tmp_path / p)).info for p in ("img.npz", "v.npy")}

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("info() read the arrays")

    monkeypatch.setattr(np, "load", no_reading)
    assert datasets.info(str(tmp_path / "img.npz")) == expected["img.npz"]
    assert expected["img.npz"] == datasets.DatasetInfo("img.npz", "image", (3, 4, 5), None, None)
    assert datasets.info(str(tmp_path / "v.npy")) == expected["v.npy"]
    assert expected["v.npy"] == datasets.DatasetInfo("v.npy", "vector", (6,), None, None)


def test_non_finite_user_inputs_are_refused_by_info_as_the_load_refuses_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``info`` (what the runner reads before any compute) streams the rows a data set would use, in chunks, and
    refuses NaN and values infinite in float32 where, and only where, loading the data set does."""
    from bench.datasets import arrays

    monkeypatch.setattr(arrays, "SCAN_BYTES", 64)  # 8 rows of 2 float32 / 4 rows of float64 per read: many reads
    rng = np.random.default_rng(0)
    x_train, x_test = rng.random((40, 2)), rng.random((10, 2))
    x_train[29, 1] = np.nan
    x_test[7, 0] = 1e300  # finite in float64, infinite in float32
    np.savez_compressed(tmp_path / "bad.npz", x_train=x_train, x_test=x_test)
    path = str(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"bad.npz: x_train holds NaN or infinite values \(in float32\), the first in "
                                         "row 29$"):
        datasets.info(path)
    kept = arrays.subset(40, 12, "n_train")
    assert 29 not in kept
    with pytest.raises(ValueError, match=r"x_test holds NaN .* row 7$"):  # a clean train subset, not a clean test split
        datasets.info(path, {"n_train": 12})
    with pytest.raises(ValueError, match="NaN or infinite"):
        load(path, n_train=12)
    inside = int(kept[3])
    x_train[29, 1], x_train[inside, 0] = 0.5, -np.inf
    x_test[7, 0] = 0.5
    np.savez(tmp_path / "bad.npz", x_train=x_train, x_test=x_test)
    with pytest.raises(ValueError, match=rf"x_train holds NaN .* row {inside}$"):
        datasets.info(path, {"n_train": 12})
    clean = [i for i in range(40) if i != inside]
    np.savez(tmp_path / "ok.npz", x_train=x_train[clean][:20], x_test=x_test)
    assert datasets.info(str(tmp_path / "ok.npz")) == load(str(tmp_path / "ok.npz")).info
    # a .npy: the split the message names is the one its fixed 80/20 split puts the row in
    v = rng.random((50, 3)).astype(np.float32)
    v[44, 2] = np.nan
    np.save(tmp_path / "v.npy", v)
    split = "train" if 44 in arrays.npy_split(50)[0] else "test"
    with pytest.raises(ValueError, match=rf"v.npy: the array \(its {split} split\) holds NaN .* row 44$"):
        datasets.info(str(tmp_path / "v.npy"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load(str(tmp_path / "v.npy"))


def test_info_of_labelled_levelled_npz_matches_the_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = str(tmp_path / "lab.npz")
    np.savez(path, x_train=rng.integers(0, 4, (20, 7, 7), dtype=np.uint8), x_test=np.zeros((5, 7, 7), np.uint8),
             y_train=np.arange(20) % 3, y_test=np.array([0, 1, 5, 1, 0]), levels=4)
    assert datasets.info(path) == load(path).info == datasets.DatasetInfo("lab.npz", "image", (1, 7, 7), 6, 4)


# ----------------------------------------------------------------------------------------------- user arrays: rules


def test_integer_arrays_need_levels_and_the_error_says_how(tmp_path: Path) -> None:
    path = tmp_path / "u8.npz"
    x = np.random.default_rng(0).integers(0, 256, (12, 1, 4, 4), dtype=np.uint8)
    np.savez(path, x_train=x, x_test=x[:4])
    for call in (lambda: load(str(path)), lambda: datasets.info(str(path))):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{path}: x_train holds integers (uint8)") and "\n" not in msg
        assert "`levels = 256` in the data set's table" in msg and "a `levels` key in the .npz" in msg
    ds = load(str(path), levels=256)
    assert ds.levels == 256 and torch.equal(ds.train_x, torch.from_numpy(x).float() / 256)
    np.save(tmp_path / "i.npy", np.arange(20).reshape(10, 2))
    with pytest.raises(ValueError, match=r"i.npy: the array holds integers \(int64\).*`levels = L`"):
        load(str(tmp_path / "i.npy"))
    assert load(str(tmp_path / "i.npy"), levels=20).levels == 20


def test_levels_from_the_file_and_the_options_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "l.npz"
    np.savez(path, x_train=np.zeros((4, 2), np.uint8), x_test=np.zeros((2, 2), np.uint8), levels=16)
    assert load(str(path), levels=16).levels == 16
    with pytest.raises(ValueError, match=f"{path}: the file's 'levels' key says 16, the data set's options say 17"):
        load(str(path), levels=17)


def test_every_user_file_error_names_the_file(tmp_path: Path) -> None:
    bad: dict[str, str] = {}
    np.savez(tmp_path / "empty.npz")
    bad["empty.npz"] = "the archive holds no arrays"
    (tmp_path / "zero.npz").write_bytes(b"")
    bad["zero.npz"] = "the file is empty"
    (tmp_path / "text.npz").write_text("not a zip")
    bad["text.npz"] = "cannot read it as a .npz file"
    np.savez(tmp_path / "keys.npz", x_train=np.ones((3, 2)), x_tset=np.ones((3, 2)))
    bad["keys.npz"] = r"missing key\(s\) \['x_test'\]"
    np.savez(tmp_path / "rank.npz", x_train=np.ones((3, 2, 2, 2, 2)), x_test=np.ones((3, 2, 2, 2, 2)))
    bad["rank.npz"] = r"x_train must be \(N, D\), \(N, H, W\) or \(N, C, H, W\)"
    np.savez(tmp_path / "differ.npz", x_train=np.ones((3, 2)), x_test=np.ones((3, 5)))
    bad["differ.npz"] = "x_train and x_test examples differ in shape"
    np.savez(tmp_path / "ylen.npz", x_train=np.ones((3, 2)), x_test=np.ones((2, 2)), y_train=np.zeros(3, int),
             y_test=np.zeros(3, int))
    bad["ylen.npz"] = r"y_test must have shape \(2,\)"
    np.savez(tmp_path / "yone.npz", x_train=np.ones((3, 2)), x_test=np.ones((2, 2)), y_train=np.zeros(3, int))
    bad["yone.npz"] = "give labels for both splits"
    np.savez(tmp_path / "range.npz", x_train=np.full((3, 2), 9, np.uint8), x_test=np.ones((2, 2), np.uint8), levels=4)
    bad["range.npz"] = r"discrete values must lie in \[0, 4\)"
    np.save(tmp_path / "one.npy", np.ones(5))
    bad["one.npy"] = "a .npy data set must be an array"
    (tmp_path / "x.csv").write_text("1,2")
    bad["x.csv"] = "a data file must be .npz"
    for name, pattern in bad.items():
        with pytest.raises(ValueError, match=f"^{tmp_path / name}: {pattern}"):
            load(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match=f"no such data file: {tmp_path / 'gone.npz'}"):
        load(str(tmp_path / "gone.npz"))


def test_relative_paths_resolve_against_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "r.npz", x_train=np.ones((4, 3)), x_test=np.zeros((2, 3)))
    monkeypatch.chdir(tmp_path / "sub")
    for name in ("r.npz", "./r.npz", "../sub/r.npz"):
        assert datasets.is_path(name) and load(name).shape == (3,)
    with pytest.raises(FileNotFoundError) as info:
        load("nope.npz")
    assert str(info.value) == (f"no such data file: {tmp_path / 'sub' / 'nope.npz'} (relative paths are resolved "
                               f"against the current directory {tmp_path / 'sub'})")


def test_loader_options_are_typed_and_checked(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", x_train=np.ones((4, 3)), x_test=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"unknown option 'level'; did you mean levels\?"):
        load(str(tmp_path / "o.npz"), level=256)
    with pytest.raises(ValueError, match=r"levels: must be >= 2, got 1"):
        load(str(tmp_path / "o.npz"), levels=1)
    with pytest.raises(ValueError, match="alpha only applies with preprocess = 'logit'"):
        load("digits", alpha=0.1)
    with pytest.raises(ValueError, match=r"n_train: expected an integer, got string '10'"):
        load("moons", n_train="10")
    with pytest.raises(ValueError, match=r"noise: must be > 0 for moons"):
        datasets.parse_options("moons", {"noise": 0.0})
    assert datasets.parse_options("checkerboard", {"noise": 0}).noise == 0.0
    a, b = load("moons", n_train=10, n_test=5, seed=1), load("moons", n_train=10, n_test=5, seed=2)
    c = datasets.load_table("moons", {"n_train": 10, "n_test": 5, "seed": 1}, seed=2)
    assert not torch.equal(a.train_x, b.train_x) and torch.equal(a.train_x, c.train_x)  # a table's seed wins
