"""Datasets: what each one is, its registry entry and its loader.

Every dataset is loaded as a :class:`Dataset` holding float32 ``(N, D)`` train and
test tensors. Binary-image datasets come in two flavours:

* ``binarize="dynamic"``: grey levels in [0, 1]; a fresh Bernoulli sample is
  drawn for every minibatch (test batches included) with :func:`binarize`, as in
  Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders"
  (arXiv 1509.00519).
* ``binarize="fixed"``: pixels already in {0, 1}, the fixed binarization of
  Larochelle & Murray (2011), "The Neural Autoregressive Distribution Estimator".

Splits follow Burda et al. (2016): MNIST keeps the first 59,600 training images
(the last 400 are held out for validation and not returned); Omniglot shuffles
the training set with ``numpy.random.RandomState(123)`` and holds out the last
1,345 images. Held-out images are never returned, so no test-set selection is
possible through this module.

Downloadable files are looked up in a data directory (see :func:`data_dir_from`) and
fetched and verified by :mod:`lvmbench.data.remote`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import math
import os
import pathlib
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from lvmbench.data.remote import (
    LAROCHELLE_URL,
    MNIST_MIRRORS,
    OMNIGLOT_URL,
    DatasetError,
    RemoteFile,
    fetch,
    reading,
)
from lvmbench.registry import Registry, options_of

IMAGE_SHAPE = (28, 28)
#: kinds of data a dataset can be and a model can declare
DATA_KINDS = ("continuous", "binary_image")
#: how a dataset's values become observations (:meth:`Dataset.observe`)
BINARIZE = ("dynamic", "fixed", "none")

@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: float32 ``(N, D)`` train and test tensors plus how to treat them."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    kind: str  # "continuous" or "binary_image"
    binarize: str  # "dynamic", "fixed" or "none"
    image_shape: tuple | None

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def observe(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x`` as the model sees it: a fresh Bernoulli sample of the grey levels, drawn with
        ``generator``, for dynamically binarized data (Burda et al. 2016, test batches
        included); ``x`` itself otherwise. The one binarization policy of training,
        evaluation, gradient variance and amortization."""
        return binarize(x, generator) if self.binarize == "dynamic" else x

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, kind={self.kind!r}, binarize={self.binarize!r})"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: what a dataset is and how to load it.

    ``loader(root, seed, **options)`` returns ``(train, test)``; its keyword-only
    parameters are the dataset's options. ``dim`` is the default dimension,
    ``offline`` is True when no download is ever needed, ``sizes`` the numbers of
    training and test points with the default options (``valid``: the training images
    the ``with_valid`` option adds), so that the planner knows every size without
    loading anything.
    """

    kind: str
    binarize: str
    dim: int
    offline: bool
    loader: Callable[..., tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    doc: str
    image_shape: tuple | None = None
    sizes: tuple[int, int] = (0, 0)
    valid: int = 0

    @property
    def options(self) -> dict[str, object]:
        """The dataset's options and their default values (the loader's keyword-only parameters)."""
        return options_of(self.loader, skip=("root", "seed"))

    def dimension(self, options: dict) -> int:
        """The data dimension D with these options (``dim`` where the dataset takes it)."""
        return options.get("dim", self.dim)

    def shape(self, options: dict) -> tuple[int, int, int]:
        """(training points, test points, D) with these options."""
        n_train = options.get("n_train", self.sizes[0]) + (self.valid if options.get("with_valid") else 0)
        return n_train, options.get("n_test", self.sizes[1]), self.dimension(options)

    def check_options(self, name: str, options: dict) -> None:
        """Refuse unknown options and values of another type than the option's default:
        ``true``/``false`` for flags, integers >= 1 for sizes. The planner and the loader
        both call this, so ``lvmbench plan`` refuses what a job would."""
        if not isinstance(options, dict):
            raise DatasetError(f"options of dataset {name!r} must be a mapping, got {options!r}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise DatasetError(
                f"unknown option(s) {', '.join(map(str, unknown))} for dataset {name!r}; "
                f"valid options: {', '.join(self.options) or 'none'}"
            )
        for key, value in options.items():
            if isinstance(self.options[key], bool) and not isinstance(value, bool):
                raise DatasetError(f"option {key} of dataset {name!r} must be true or false, got {value!r}")
            if type(self.options[key]) is int and (type(value) is not int or value < 1):
                raise DatasetError(f"option {key} must be a positive integer, got {value!r}")


def data_dir_from(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data directory: ``data_dir`` if given, else ``$LVMBENCH_DATA`` (an empty value counts as
    unset), else ``~/.cache/lvmbench``; an empty ``data_dir`` is refused, as the config refuses it."""
    if data_dir is None:
        data_dir = os.environ.get("LVMBENCH_DATA") or pathlib.Path.home() / ".cache" / "lvmbench"
    if isinstance(data_dir, str) and not data_dir.strip():  # Path("") would be the working directory
        raise DatasetError("the data directory must not be empty; leave data_dir unset for $LVMBENCH_DATA, "
                           "else ~/.cache/lvmbench")
    return pathlib.Path(data_dir).expanduser()


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(x) sample of grey levels ``x`` in [0, 1], same shape, dtype and device."""
    return torch.bernoulli(x, generator=generator)


# --------------------------------------------------------------------------------------
# Synthetic continuous datasets
# --------------------------------------------------------------------------------------

#: True parameters of the ``gmm2d`` mixture: 3 well separated full-covariance
#: Gaussians with unequal weights (in the spirit of the CS294-158 lecture 4 demo).
GMM2D_WEIGHTS = (0.5, 0.3, 0.2)
GMM2D_MEANS = ((-3.0, -2.0), (3.0, 3.0), (4.0, -3.5))
GMM2D_COVARIANCES = (
    ((1.0, 0.6), (0.6, 0.8)),
    ((0.5, -0.3), (-0.3, 1.2)),
    ((0.8, 0.2), (0.2, 0.3)),
)


def gmm2d_distribution() -> torch.distributions.MixtureSameFamily:
    """The true ``gmm2d`` density, e.g. for the exact data log-likelihood or contour plots."""
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=torch.tensor(GMM2D_WEIGHTS)),
        torch.distributions.MultivariateNormal(
            torch.tensor(GMM2D_MEANS), covariance_matrix=torch.tensor(GMM2D_COVARIANCES)
        ),
    )


def _load_gmm2d(root: pathlib.Path, seed: int, *, n_train: int = 2000, n_test: int = 1000):
    g = torch.Generator().manual_seed(seed)
    component = torch.multinomial(torch.tensor(GMM2D_WEIGHTS), n_train + n_test, replacement=True, generator=g)
    scale = torch.linalg.cholesky(torch.tensor(GMM2D_COVARIANCES))
    eps = torch.randn(n_train + n_test, 2, 1, generator=g)
    x = torch.tensor(GMM2D_MEANS)[component] + (scale[component] @ eps).squeeze(-1)
    return x[:n_train], x[n_train:]


def _gaussian_toy_draw(seed: int, dim: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g)
    z = mu + torch.randn(n, dim, generator=g)
    return mu, z + torch.randn(n, dim, generator=g)


def gaussian_toy_mean(seed: int = 0, dim: int = 20) -> torch.Tensor:
    """``mu_true`` behind ``load_dataset("gaussian_toy", seed=seed, dim=dim)``; there ``x ~ N(mu_true, 2 I)``."""
    return _gaussian_toy_draw(seed, dim, 0)[0]


def _load_gaussian_toy(root: pathlib.Path, seed: int, *, dim: int = 20, n_train: int = 1024, n_test: int = 1024):
    x = _gaussian_toy_draw(seed, dim, n_train + n_test)[1]
    return x[:n_train], x[n_train:]


# --------------------------------------------------------------------------------------
# Image datasets
# --------------------------------------------------------------------------------------


def _grey(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels 0-255 -> float32 grey levels in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(255))


def _split_off(x: np.ndarray, n_heldout: int, shuffle_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, heldout)``: the last ``n_heldout`` rows, after a RandomState permutation if seeded."""
    if shuffle_seed is not None:
        x = x[np.random.RandomState(shuffle_seed).permutation(len(x))]
    return x[:-n_heldout], x[-n_heldout:]


#: the 5,000 offline digits shipped inside lvmbench (files/NOTICE.md: source, licence, recipe)
MNIST5K = "mnist5k.npz"
MNIST5K_SHA256 = "970702d994c498f4ed47376383483ffa572089f72cd489dad1f40f362dbc14bf"


def _load_mnist5k(root: pathlib.Path, seed: int):
    """The first 500 MNIST training images of each digit, in digit order, from the file shipped
    in the package (checksum-verified). The split is fixed (shuffle with RandomState(123), 1000
    test images) whatever ``seed``."""
    shipped = importlib.resources.files("lvmbench.data") / "files" / MNIST5K
    try:
        raw = shipped.read_bytes()
    except OSError as err:
        raise DatasetError(f"dataset 'mnist5k': the shipped file {MNIST5K} cannot be read ({err}); "
                           f"reinstall lvmbench") from None
    if hashlib.sha256(raw).hexdigest() != MNIST5K_SHA256:
        raise DatasetError(f"dataset 'mnist5k': the shipped file {shipped} fails its SHA-256 check; reinstall lvmbench")
    with np.load(io.BytesIO(raw)) as npz:
        pixels = npz["images"]  # (5000, 784) uint8, 500 images per digit
    train, test = _split_off(pixels, 1000, shuffle_seed=123)
    return _grey(train), _grey(test)


def _mnist_file(name: str) -> RemoteFile:
    return RemoteFile(name, "mnist", MNIST_MIRRORS)


def _read_idx_images(path: pathlib.Path) -> np.ndarray:
    with reading(path), gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">4i", raw[:16]) if len(raw) >= 16 else (0, 0, 0, 0)
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise DatasetError(f"{path}: not an idx3 image file")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols)


def _load_mnist(root: pathlib.Path, seed: int, *, download: bool = True):
    """Burda et al. (2016): the first 59,600 training images (last 400 held out), 10k test."""
    train, test = (
        _read_idx_images(fetch(_mnist_file(name), root, download))
        for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    )
    return _grey(_split_off(train, 400)[0]), _grey(test)


def _read_amat(path: pathlib.Path) -> torch.Tensor:
    """A Larochelle ``.amat`` file (each line: 784 digits 0/1 separated by single spaces)."""
    with reading(path), (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    line = 2 * 784
    if len(raw) % line:
        raise DatasetError(f"{path}: not a 784-column .amat file")
    return torch.from_numpy((np.frombuffer(raw, np.uint8).reshape(-1, line)[:, ::2] - ord("0")).astype(np.float32))


def _load_binarized_mnist(root: pathlib.Path, seed: int, *, with_valid: bool = False, download: bool = True):
    """Larochelle & Murray (2011) fixed binarization: 50k train (+10k valid with ``with_valid``), 10k test."""

    def part(split: str) -> torch.Tensor:
        remote = RemoteFile(f"binarized_mnist_{split}.amat", "binarized_mnist", (LAROCHELLE_URL,), gz_ok=True)
        return _read_amat(fetch(remote, root, download))

    train = torch.cat([part("train"), part("valid")]) if with_valid else part("train")
    return train, part("test")


def _load_omniglot(root: pathlib.Path, seed: int, *, download: bool = True):
    """Burda et al. (2016) ``chardata.mat``: train shuffled with RandomState(123), last 1,345 held out."""
    import scipy.io

    remote = RemoteFile("chardata.mat", "omniglot", (OMNIGLOT_URL,), algorithm="git-sha1")
    path = fetch(remote, root, download)
    with reading(path):
        mat = scipy.io.loadmat(path)

    def images(key: str) -> np.ndarray:  # (784, N) MATLAB column-major images -> (N, 784) row-major
        return mat[key].T.reshape(-1, *IMAGE_SHAPE).reshape(-1, 784, order="F").astype(np.float32)

    train = _split_off(images("data"), 1345, shuffle_seed=123)[0]
    return torch.from_numpy(train), torch.from_numpy(images("testdata"))


def _check_dataset(name: str, spec: DatasetSpec) -> None:
    """Refuse a dataset entry whose declarations are malformed."""
    where = f"dataset {name!r}"
    if not isinstance(spec, DatasetSpec):
        raise DatasetError(f"{where} must be an lvmbench.data.DatasetSpec, got {type(spec).__name__}")
    if spec.kind not in DATA_KINDS:
        raise DatasetError(f"{where}: kind must be one of {', '.join(DATA_KINDS)}, got {spec.kind!r}")
    if spec.binarize not in BINARIZE:
        raise DatasetError(f"{where}: binarize must be one of {', '.join(BINARIZE)}, got {spec.binarize!r}")
    if not isinstance(spec.dim, int) or isinstance(spec.dim, bool) or spec.dim < 1:
        raise DatasetError(f"{where}: dim must be a positive integer, got {spec.dim!r}")
    if not isinstance(spec.offline, bool):
        raise DatasetError(f"{where}: offline must be True or False, got {spec.offline!r}")
    if not (isinstance(spec.sizes, tuple) and len(spec.sizes) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in spec.sizes)):
        raise DatasetError(f"{where}: sizes must be (n_train, n_test), two integers >= 0, got {spec.sizes!r}")
    if not callable(spec.loader):
        raise DatasetError(f"{where}: loader must be a function loader(root, seed, **options)")
    if spec.image_shape is not None and math.prod(spec.image_shape) != spec.dim:
        raise DatasetError(f"{where}: image_shape {spec.image_shape} does not hold dim={spec.dim} values")


DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", capabilities=("kind", "binarize", "dim", "offline", "sizes"), check=_check_dataset,
    options=lambda spec: spec.options, plugins="lvmbench.datasets")

DATASETS.register("gmm2d")(DatasetSpec(
    "continuous", "none", 2, True, _load_gmm2d,
    "2-D mixture of 3 full-covariance Gaussians (GMM2D_* constants); seeded.", sizes=(2000, 1000),
))

DATASETS.register("gaussian_toy")(DatasetSpec(
    "continuous", "none", 20, True, _load_gaussian_toy,
    "Rainforth et al. (2018) toy: mu ~ N(0, I), x ~ N(mu, 2I), 1024/1024 points; seeded.", sizes=(1024, 1024),
))

DATASETS.register("mnist5k")(DatasetSpec(
    "binary_image", "dynamic", 784, True, _load_mnist5k,
    "5000 MNIST training images (the first 500 of each digit), shipped with lvmbench; fixed 4000/1000 split.",
    IMAGE_SHAPE, sizes=(4000, 1000),
))

DATASETS.register("mnist")(DatasetSpec(
    "binary_image", "dynamic", 784, False, _load_mnist,
    "LeCun MNIST, Burda et al. (2016) split: 59,600 train, 10,000 test.",
    IMAGE_SHAPE, sizes=(59600, 10000),
))

DATASETS.register("binarized_mnist")(DatasetSpec(
    "binary_image", "fixed", 784, False, _load_binarized_mnist,
    "Larochelle & Murray (2011) fixed binarization: 50,000 train, 10,000 test.",
    IMAGE_SHAPE, sizes=(50000, 10000), valid=10000,
))

DATASETS.register("omniglot")(DatasetSpec(
    "binary_image", "dynamic", 784, False, _load_omniglot,
    "Omniglot chardata.mat, Burda et al. (2016) split: 23,000 train, 8,070 test.",
    IMAGE_SHAPE, sizes=(23000, 8070),
))


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, **options
) -> Dataset:
    """Load a registered dataset.

    ``data_dir`` is resolved by :func:`data_dir_from`; ``seed`` drives the synthetic
    datasets (the image splits are fixed by their papers). ``options`` are the
    dataset's own (see ``DATASETS[name].options()``), e.g. ``download=False``.
    """
    if name not in DATASETS:
        raise DatasetError(DATASETS.unknown(name))
    spec = DATASETS[name].obj
    spec.check_options(name, options)
    train, test = spec.loader(data_dir_from(data_dir), seed, **options)
    return Dataset(name, train.contiguous(), test.contiguous(), spec.kind, spec.binarize, spec.image_shape)
