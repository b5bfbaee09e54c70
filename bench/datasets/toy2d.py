"""Generated 2-D densities with an exact log-density and an exact (numerically integrated) entropy.

Every data set here is *defined* by a density we can evaluate exactly, and sampled exactly from it, so a
model's test NLL has a known floor: ``E[-log p_true] = H`` and ``kl_gap = test_nll - H >= 0`` up to the
sampling error of the test set.

Densities (``noise`` is a standard deviation in the raw units named below, before standardisation):

- ``"gaussians8"``: 8 equal Gaussians, std ``noise`` (default 0.1), centred on the unit circle at angles
  ``2 pi k / 8``. Labels: the mode ``k``.
- ``"checkerboard"``: the uniform density on the 8 black cells of a 4x4 board of unit cells on ``[-2, 2]^2``
  (cell ``(i, j)`` black when ``i + j`` is even), convolved with an isotropic Gaussian of std ``noise``
  (default 0.05). Its exact density is ``p(x) = (1/8) sum_cells prod_d [Phi((b_d - x_d)/s) - Phi((a_d - x_d)/s)]``
  for a cell ``[a_1, b_1] x [a_2, b_2]``: smooth, so it trains better than the sharp board. ``noise=0`` gives
  the sharp board (discontinuous density, entropy ``log(area)`` in closed form). No labels.
- ``"moons"``: two half-circle arcs as in scikit-learn's ``make_moons`` (``(cos t, sin t)`` and
  ``(1 - cos t, 1/2 - sin t)``, ``t in [0, pi]``), ``noise`` default 0.1. Labels: the moon.
- ``"spirals"``: two interleaved Archimedean arms ``r = theta / pi``, ``theta in [pi/2, 3 pi]``, the second
  arm rotated by ``pi`` (arms 1 apart), ``noise`` default 0.1. Labels: the arm.
- ``"rings"``: three concentric circles of radii 1, 2, 3 carrying mass proportional to their length,
  ``noise`` default 0.1. Labels: the ring.

Moons, spirals and rings are *dense finite Gaussian mixtures* along the curves: equal-weight components of
std ``noise`` whose centres are spaced at most ``noise / 2`` apart in arc length (midpoints of equal
arc-length pieces). This is a Riemann sum of the continuous "Gaussian tube" mixture along the curve; the
ripple it leaves along the curve is of relative size about ``2 exp(-2 pi^2 (noise/spacing)^2) < 1e-30``, and,
more to the point, the finite mixture *is* the data distribution, so its log-density (a log-sum-exp over the
components) is exact and sampling (pick a component, add Gaussian noise) is exact.

Each density is standardised by an exact affine map ``x -> (x - m) / a`` (``m`` the exact mean, ``a`` the
exact per-coordinate standard deviation, computed from the mixture parameters, not from samples) so each
coordinate has mean 0 and variance 1; coordinates may stay correlated (the checkerboard: correlation
``(1/4) / (4/3 + noise^2)``, 0.187 at the default).

Entropy ``H = -integral p log p`` (nats) is computed once per process (cached) by the midpoint rule on a
square grid of step ``h = s / 2`` covering the support plus ``8 s`` (``s`` the smallest standardised noise std;
for the checkerboard the blur). For a smooth integrand whose Fourier transform decays like a Gaussian of width
``1/s`` the midpoint rule's error is of order ``exp(-2 pi^2 (s/h)^2) = exp(-79)``, i.e. round-off; the cut-off
tails carry mass below ``1e-14``. The loader records ``|H(h) - H(2h)|`` as ``meta["entropy_error"]``, an
over-estimate (it is the coarse grid's error; measured below ``4e-6`` nats for every default density) and the
grid's total mass as ``meta["quadrature_mass"]`` (``1`` within ``1e-14``). Measured against a grid of step
``h / 2`` on a box widened by 1, ``H`` changes by at most ``1e-9`` nats for every default density.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.source import DatasetSource, LoaderOptions
from bench.options import OptionError, opt

NAMES = ("gaussians8", "checkerboard", "moons", "spirals", "rings")
DEFAULT_NOISE = {"gaussians8": 0.1, "checkerboard": 0.05, "moons": 0.1, "spirals": 0.1, "rings": 0.1}
N_TRAIN, N_TEST = 10_000, 5_000
_CHUNK = 4096


class Density2D(ABC):
    """An exact 2-D density. Calling it gives ``log p(x)``: (N, 2) -> (N,) in nats, in ``x``'s dtype
    (computed in float64). Instances are plain picklable objects."""

    #: number of classes of the labels :meth:`sample` returns, or None when unlabelled
    num_classes: int | None = None

    @abstractmethod
    def log_prob64(self, x: Tensor) -> Tensor:
        """``log p(x)`` for float64 ``x`` (N, 2) -> (N,)."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """``n`` exact samples (n, 2) float64 and their labels (n,) int64 (or None)."""

    @abstractmethod
    def quadrature_box(self) -> tuple[float, float]:
        """``(half_width, step)`` of the grid on ``[-half_width, half_width]^2`` used for the entropy."""

    def exact_entropy(self) -> float | None:
        """The entropy in closed form where there is one, else None (then it is integrated numerically)."""
        return None

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (N, 2), got {tuple(x.shape)}")
        x64 = x.detach().to("cpu", torch.float64)
        out = torch.cat([self.log_prob64(c) for c in x64.split(_CHUNK)]) if len(x64) else x64.new_zeros(0)
        return out.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)


class GaussianMixture2D(Density2D):
    """Equal-weight axis-aligned Gaussian mixture: ``p(x) = (1/K) sum_k N(x; c_k, diag(s_1^2, s_2^2))``.

    Attributes: ``centres`` (K, 2) float64, ``std`` (2,) float64 per-coordinate std ``s``, ``labels`` (K,)
    int64 class of each component.
    """

    def __init__(self, centres: Tensor, std: float | Tensor, labels: Tensor, num_classes: int | None) -> None:
        self.centres = centres.to(torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64).expand(2).clone()
        self.labels = labels.to(torch.int64)
        self.num_classes = num_classes

    def standardised(self) -> GaussianMixture2D:
        """The same mixture under the exact affine map ``x -> (x - m) / a`` (``m`` the mean, ``a`` the
        per-coordinate standard deviation): zero mean and unit variance in each coordinate."""
        m = self.centres.mean(0)
        a = (((self.centres - m) ** 2).mean(0) + self.std**2).sqrt()
        return GaussianMixture2D((self.centres - m) / a, self.std / a, self.labels, self.num_classes)

    def log_prob64(self, x: Tensor) -> Tensor:
        xs, cs = x / self.std, self.centres / self.std
        d2 = ((xs * xs).sum(1, keepdim=True) - 2 * xs @ cs.T + (cs * cs).sum(1)).clamp_min(0)
        norm = math.log(cs.shape[0]) + math.log(2 * math.pi) + float(self.std.log().sum())
        return torch.logsumexp(-d2 / 2, dim=1) - norm

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        comp = torch.randint(self.centres.shape[0], (n,), generator=generator)
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.centres[comp] + self.std * eps, self.labels[comp]

    def quadrature_box(self) -> tuple[float, float]:
        return float(self.centres.abs().max() + 8 * self.std.max()), float(self.std.min()) / 2


def _log_ndtr_diff(hi: Tensor, lo: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, stable in both tails (works where both lie in a tail)."""
    flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): keep the arguments in the lower tail
    a = torch.where(flip, -lo, hi)
    b = torch.where(flip, -hi, lo)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return la + torch.log1p(-torch.exp(lb - la))


class Checkerboard2D(Density2D):
    """Uniform on the black cells of a 4x4 board, convolved with ``N(0, blur^2 I)`` (``blur = 0``: sharp).

    Attributes: ``corners`` (8, 2) lower-left corners of the black cells, ``side`` cell side, ``blur``.
    """

    def __init__(self, side: float, blur: float) -> None:
        cells = [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
        self.corners = (torch.tensor(cells, dtype=torch.float64) - 2) * side
        self.side = float(side)
        self.blur = float(blur)
        self.log_area = math.log(len(cells) * side**2)

    def log_prob64(self, x: Tensor) -> Tensor:
        lo = self.corners[None] - x[:, None]  # (N, 8, 2): a_d - x_d
        hi = lo + self.side
        if self.blur == 0:
            inside = ((lo <= 0) & (hi > 0)).all(-1).any(-1)
            return torch.where(inside, -self.log_area, -math.inf).to(torch.float64)
        per_cell = _log_ndtr_diff(hi / self.blur, lo / self.blur).sum(-1)
        return torch.logsumexp(per_cell, dim=1) - self.log_area

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        cell = torch.randint(self.corners.shape[0], (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.corners[cell] + self.side * u + self.blur * eps, None

    def quadrature_box(self) -> tuple[float, float]:
        return 2 * self.side + 8 * self.blur, (self.blur / 2 if self.blur > 0 else self.side / 64)

    def exact_entropy(self) -> float | None:
        return self.log_area if self.blur == 0 else None


def _arc_centres(points: np.ndarray, spacing: float) -> np.ndarray:
    """Centres at the midpoints of equal arc-length pieces (each at most ``spacing`` long) of a polyline.

    ``points`` (M, 2) is a fine polyline of the curve; returns (n, 2).
    """
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(8, math.ceil(s[-1] / spacing))
    targets = (np.arange(n) + 0.5) * s[-1] / n
    return np.stack([np.interp(targets, s, points[:, 0]), np.interp(targets, s, points[:, 1])], axis=1)


def _curve_mixture(curves: list[np.ndarray], noise: float) -> GaussianMixture2D:
    centres = [_arc_centres(c, noise / 2) for c in curves]
    labels = torch.cat([torch.full((len(c),), i, dtype=torch.int64) for i, c in enumerate(centres)])
    return GaussianMixture2D(torch.from_numpy(np.concatenate(centres)), noise, labels, len(curves))


def _raw_density(name: str, noise: float) -> Density2D:
    fine = 20_001
    if name == "gaussians8":
        ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        return GaussianMixture2D(torch.stack([ang.cos(), ang.sin()], 1), noise, torch.arange(8), 8)
    if name == "checkerboard":
        a = math.sqrt(4 / 3 + noise**2)  # per-coordinate std of the raw blurred board
        return Checkerboard2D(1 / a, noise / a)
    if name == "moons":
        t = np.linspace(0, math.pi, fine)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
        return _curve_mixture([outer, inner], noise)
    if name == "spirals":
        th = np.linspace(math.pi / 2, 3 * math.pi, fine)
        r = th / math.pi
        arm = np.stack([r * np.cos(th), r * np.sin(th)], 1)
        return _curve_mixture([arm, -arm], noise)
    if name == "rings":
        t = np.linspace(0, 2 * math.pi, fine)
        return _curve_mixture([r * np.stack([np.cos(t), np.sin(t)], 1) for r in (1.0, 2.0, 3.0)], noise)
    raise KeyError(f"unknown 2-D density {name!r}; known: {', '.join(NAMES)}")


@lru_cache(maxsize=32)
def density(name: str, noise: float | None = None) -> Density2D:
    """The standardised density ``name`` (one of :data:`NAMES`) with ``noise`` (None: the default)."""
    noise = DEFAULT_NOISE[name] if noise is None and name in DEFAULT_NOISE else noise
    if noise is None or not math.isfinite(noise) or noise < 0 or (noise == 0 and name != "checkerboard"):
        raise ValueError(f"{name}: noise must be positive (0 allowed for the checkerboard), got {noise}")
    d = _raw_density(name, float(noise))
    return d.standardised() if isinstance(d, GaussianMixture2D) else d


def quadrature(d: Density2D, step: float, half_width: float) -> tuple[float, float]:
    """Midpoint rule on ``[-half_width, half_width]^2``: ``(integral of p, -integral of p log p)``."""
    n = max(2, math.ceil(2 * half_width / step))
    h = 2 * half_width / n
    g = -half_width + (torch.arange(n, dtype=torch.float64) + 0.5) * h
    mass, ent = 0.0, 0.0
    for rows in g.split(max(1, _CHUNK // n)):
        pts = torch.stack(torch.meshgrid(rows, g, indexing="ij"), -1).reshape(-1, 2)
        lp = d.log_prob64(pts)
        p = lp.exp()
        mass += float(p.sum()) * h * h
        ent -= float(torch.where(p > 0, p * lp, torch.zeros_like(p)).sum()) * h * h
    return mass, ent


@lru_cache(maxsize=32)
def entropy(name: str, noise: float | None = None) -> tuple[float, float, float]:
    """``(H, error estimate, grid mass)`` of ``density(name, noise)`` in nats, cached per process.

    Closed form where there is one (error 0, mass 1); else the midpoint rule with the density's step ``h``,
    the error estimate being ``|H(h) - H(2h)|``.
    """
    d = density(name, noise)
    exact = d.exact_entropy()
    if exact is not None:
        return exact, 0.0, 1.0
    half, step = d.quadrature_box()
    mass, h_fine = quadrature(d, step, half)
    _, h_coarse = quadrature(d, 2 * step, half)
    return h_fine, abs(h_fine - h_coarse), mass


def load_toy(name: str, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
             noise: float | None = None) -> Dataset:
    """Sample ``name`` with ``torch.Generator().manual_seed(seed)``: train (n_train, 2) then test (n_test, 2)."""
    n_train = N_TRAIN if n_train is None else n_train
    n_test = N_TEST if n_test is None else n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    d = density(name, noise)
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = d.sample(n_train, gen)
    x_te, y_te = d.sample(n_test, gen)
    h, err, mass = entropy(name, noise)
    used_noise = DEFAULT_NOISE[name] if noise is None else noise
    method = "closed form log(area)" if d.exact_entropy() is not None else "midpoint-rule quadrature"
    return Dataset(
        name=name, kind="vector", train_x=x_tr.float(), test_x=x_te.float(), train_y=y_tr, test_y=y_te,
        num_classes=d.num_classes, levels=None, log_density=d, entropy=h,
        description=(f"{name}: exact 2-D density (noise {used_noise}, standardised to zero mean and unit average "
                     f"variance), sampled with seed {seed}; entropy {h:.6f} nats by {method} "
                     f"(error estimate {err:.1e})."),
        meta={"noise": used_noise, "entropy_method": method, "entropy_error": err, "quadrature_mass": mass,
              "components": int(d.centres.shape[0]) if isinstance(d, GaussianMixture2D) else None},
    )


@dataclass(frozen=True)
class ToyOptions(LoaderOptions):
    """Options of the generated 2-D densities (``n_train`` / ``n_test`` default to 10000 / 5000)."""

    noise: float | None = field(default=None, metadata=opt(
        "noise std in raw units (default 0.1; checkerboard 0.05, where 0 gives the sharp board)", min=0))
    seed: int | None = field(default=None, metadata=opt("sampling seed (default: the cell's seed)", min=0))


class Toy2DSource(DatasetSource[ToyOptions]):
    """One of :data:`NAMES`: vectors (2,), labelled as its density says, continuous."""

    Options = ToyOptions

    def __init__(self, name: str) -> None:
        self.name = name

    def parse(self, data: Mapping[str, Any] | None, where: str) -> ToyOptions:
        options = super().parse(data, where)
        if options.noise == 0 and self.name != "checkerboard":
            raise OptionError(f"{where}.noise: must be > 0 for {self.name} (0 is allowed for the checkerboard)")
        return options

    def info(self, options: ToyOptions, seed: int = 0) -> DatasetInfo:
        return DatasetInfo(self.name, "vector", (2,), density(self.name, options.noise).num_classes, None)

    def read(self, options: ToyOptions, seed: int) -> Dataset:
        return load_toy(self.name, seed=seed if options.seed is None else options.seed, n_train=options.n_train,
                        n_test=options.n_test, noise=options.noise)


gaussians8, checkerboard, moons, spirals, rings = (Toy2DSource(n) for n in NAMES)
