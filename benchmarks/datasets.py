"""Dataset loaders and Lightning data modules for the training benchmark.

Every loader returns plain in-memory tensors (``uint8`` images, ``int64`` labels) so that a
batch costs one indexing operation, and every data module hands out the same batches in the
same order for a given seed, whatever the optimizer.

Supported on-disk formats (nothing is downloaded unless the caller allows it):

* Fashion-MNIST: the four canonical IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``), as shipped by Debian's ``dataset-fashion-mnist`` package in
  ``/usr/share/datasets/fashion-mnist/`` or by torchvision in ``<root>/FashionMNIST/raw/``.
* SVHN: torchvision's cropped-digit format, ``train_32x32.mat`` and ``test_32x32.mat``
  (MATLAB v5 files with ``X`` of shape ``(32, 32, 3, N)`` and ``y`` of shape ``(N, 1)`` where the
  digit 0 is stored as label 10).
* Tiny ImageNet: the official ``tiny-imagenet-200.zip`` layout, unpacked:
  ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with
  ``val/val_annotations.txt``. The labelled ``val`` split is used as the test set (the official
  ``test`` split has no labels).
* digits: scikit-learn's bundled 8x8 digits (1797 images), for smoke runs and tests.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE = Path(os.environ.get("HGPSO_DATA", Path.home() / ".cache" / "hgpso" / "datasets"))


class DatasetError(RuntimeError):
    """A dataset is missing or malformed. The message says where we looked and how to get it."""


@dataclass
class ArraySplits:
    """In-memory train/test split: images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""  # where the data was read from (printed by load_dataset)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_HOWTO = (
    "Get it with `sudo apt-get install dataset-fashion-mnist` (files land in "
    "/usr/share/datasets/fashion-mnist/), or put the four IDX files (optionally .gz) from "
    "https://github.com/zalandoresearch/fashion-mnist in a directory and pass --data-root DIR, "
    "or allow torchvision to download them (online machines only, drop --no-download)."
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; only unsigned bytes (0x08)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise DatasetError(
            f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()}, expected 000008xx)"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: header announces {dims} = {expected} bytes but the file holds "
            f"{len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_candidates(data_root: str | Path | None) -> list[Path]:
    """Directories searched for the IDX files, in order.

    An explicit ``data_root`` is the only place searched: a run pointed at a directory must
    never silently train on another copy (the system one or the cache).
    """
    if data_root:
        root = Path(data_root)
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return [
        DEBIAN_FASHION_MNIST,
        DEFAULT_CACHE / "fashion-mnist",
        DEFAULT_CACHE / "FashionMNIST" / "raw",
    ]


def _has_fashion_files(directory: Path) -> bool:
    return all(_find_idx(directory, v) for v in FASHION_FILES.values())


def load_fashion_mnist(data_root: str | Path | None = None, download: bool = True) -> ArraySplits:
    looked = fashion_mnist_candidates(data_root)
    for directory in looked:
        files = {k: _find_idx(directory, v) for k, v in FASHION_FILES.items()}
        if all(files.values()):
            arrays = {k: read_idx(p) for k, p in files.items() if p is not None}
            return _fashion_from_arrays(arrays, directory)
    target = Path(data_root) if data_root else DEFAULT_CACHE
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
            return load_fashion_mnist(data_root, download=False)
        except Exception as exc:  # offline, torchvision missing, ...
            reason = f" The torchvision download into {target} failed: {exc}."
    else:
        reason = " Download disabled."
    if data_root:
        elsewhere = [d for d in fashion_mnist_candidates(None) if _has_fashion_files(d)]
        reason += " Only --data-root was searched" + (
            f"; a copy exists in {elsewhere[0]}: drop --data-root to use it." if elsewhere else "."
        )
    raise DatasetError(
        "Fashion-MNIST not found. Looked for "
        + ", ".join(FASHION_FILES.values())
        + " (or .gz) in: "
        + ", ".join(str(d) for d in looked)
        + "."
        + reason
        + " "
        + FASHION_HOWTO
    )


def _fashion_from_arrays(arrays: dict[str, np.ndarray], where: Path) -> ArraySplits:
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                f"Fashion-MNIST in {where}: {split} images {x.shape} and labels {y.shape} do "
                f"not match (expected (N, 28, 28) and (N,)). {FASHION_HOWTO}"
            )
        if y.size and y.max() > 9:
            raise DatasetError(f"Fashion-MNIST in {where}: {split} labels exceed 9")
    return ArraySplits(
        train_x=torch.from_numpy(arrays["train_x"]).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(arrays["test_x"]).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        source=str(where),
    )


# --------------------------------------------------------------------------- SVHN

SVHN_HOWTO = (
    "Download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
    "(or let torchvision.datasets.SVHN(root, split=..., download=True) fetch them on an online "
    "machine) and pass --data-root DIR (the directory holding the .mat files, or its parent "
    "with an svhn/ subdirectory)."
)


def load_svhn_mat(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one torchvision-format SVHN ``.mat`` file: images ``(N, 3, 32, 32)``, labels 0-9."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable MATLAB file ({exc}). {SVHN_HOWTO}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path}: missing the 'X'/'y' arrays of the SVHN format. {SVHN_HOWTO}")
    x, y = mat["X"], mat["y"].astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DatasetError(
            f"{path}: X has shape {x.shape}, expected (32, 32, 3, {len(y)}). {SVHN_HOWTO}"
        )
    y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{path}: labels outside 1..10")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    return images, torch.from_numpy(y)


def load_svhn(data_root: str | Path | None = None, download: bool = False) -> ArraySplits:
    # An explicit data_root is the only place searched (never a silent other copy).
    roots = [Path(data_root)] if data_root else [DEFAULT_CACHE]
    looked = [d for r in roots for d in (r, r / "svhn", r / "SVHN")]
    for directory in looked:
        train, test = directory / "train_32x32.mat", directory / "test_32x32.mat"
        if train.is_file() and test.is_file():
            tx, ty = load_svhn_mat(train)
            ex, ey = load_svhn_mat(test)
            return ArraySplits(
                tx,
                ty,
                ex,
                ey,
                10,
                mean=(0.4377, 0.4438, 0.4728),
                std=(0.1980, 0.2010, 0.1970),
                source=str(directory),
            )
    reason = ""
    if download:
        target = (Path(data_root) if data_root else DEFAULT_CACHE) / "svhn"
        try:
            from torchvision.datasets import SVHN

            for split in ("train", "test"):
                SVHN(str(target), split=split, download=True)
            return load_svhn(data_root, download=False)
        except Exception as exc:
            reason = f" The torchvision download into {target} failed: {exc}."
    raise DatasetError(
        "SVHN not found. Looked for train_32x32.mat and test_32x32.mat in: "
        + ", ".join(str(d) for d in looked)
        + "."
        + reason
        + " "
        + SVHN_HOWTO
    )


# --------------------------------------------------------------------------- Tiny ImageNet

TINY_HOWTO = (
    "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass "
    "--data-root DIR where DIR is tiny-imagenet-200/ (holding wnids.txt, train/, val/) or its "
    "parent."
)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.shape != (64, 64, 3):
        raise DatasetError(f"{path}: image is {arr.shape[:2]}, Tiny ImageNet images are 64x64")
    return arr


def load_tiny_imagenet_dir(root: str | Path) -> ArraySplits:
    """Read an unpacked ``tiny-imagenet-200`` directory (train split and labelled val split)."""
    root = Path(root)
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]
    if not wnids:
        raise DatasetError(f"{root / 'wnids.txt'} lists no classes. {TINY_HOWTO}")
    index = {w: i for i, w in enumerate(wnids)}
    train_imgs, train_lbls = [], []
    for wnid in wnids:
        img_dir = root / "train" / wnid / "images"
        files = sorted(img_dir.glob("*.JPEG"))
        if not files:
            raise DatasetError(f"{img_dir}: no *.JPEG training images for class {wnid}")
        for f in files:
            train_imgs.append(_read_rgb(f))
            train_lbls.append(index[wnid])
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DatasetError(f"{ann} is missing. {TINY_HOWTO}")
    val_imgs, val_lbls = [], []
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        name, wnid = parts[0], parts[1]
        if wnid not in index:
            raise DatasetError(f"{ann}: class {wnid} of {name} is not in wnids.txt")
        val_imgs.append(_read_rgb(root / "val" / "images" / name))
        val_lbls.append(index[wnid])
    if not val_imgs:
        raise DatasetError(f"{ann} lists no images. {TINY_HOWTO}")

    def to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())

    return ArraySplits(
        to_tensor(train_imgs),
        torch.tensor(train_lbls, dtype=torch.int64),
        to_tensor(val_imgs),
        torch.tensor(val_lbls, dtype=torch.int64),
        num_classes=len(wnids),
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
        source=str(root),
    )


def load_tiny_imagenet(data_root: str | Path | None = None) -> ArraySplits:
    roots = [Path(data_root)] if data_root else [DEFAULT_CACHE]
    looked = [d for r in roots for d in (r, r / "tiny-imagenet-200")]
    for directory in looked:
        if (directory / "wnids.txt").is_file() and (directory / "train").is_dir():
            return load_tiny_imagenet_dir(directory)
    raise DatasetError(
        "Tiny ImageNet not found. Looked for wnids.txt and train/ in: "
        + ", ".join(str(d) for d in looked)
        + ". "
        + TINY_HOWTO
    )


# --------------------------------------------------------------------------- digits


def load_digits_splits(test_fraction: float = 0.25) -> ArraySplits:
    """scikit-learn's 8x8 digits (values 0..16 rescaled to 0..255), fixed stratified-free split."""
    import sklearn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed, independent of the run seed
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return ArraySplits(
        torch.from_numpy(x[train]),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test]),
        torch.from_numpy(y[test]),
        num_classes=10,
        mean=(0.3,),
        std=(0.38,),
        source=f"scikit-learn {sklearn.__version__}'s bundled 8x8 digits",
    )


# --------------------------------------------------------------------------- batching


class NormalizedTensorDataset(Dataset):
    """uint8 images normalised on the fly; ``__getitems__`` makes a batch one indexing op."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std) -> None:
        self.x, self.y = x, y
        c = x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.y)

    def _batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.x[idx].float() - self.mean) / self.std
        return x, self.y[idx]

    def __getitem__(self, i: int):
        x, y = self._batch(torch.tensor([i]))
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        return self._batch(torch.as_tensor(indices))


def _identity_collate(batch):
    return batch


def holdout_split(n: int, fraction: float, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (seed-independent by default) split of ``range(n)`` into (train, held-out) indices."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout fraction must be in (0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, round(n * fraction))
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def symmetric_label_noise(
    labels: torch.Tensor, num_classes: int, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise: ``(noisy_labels, corrupted_mask)``.

    Exactly ``round(p * n)`` of the :math:`n` labels, chosen uniformly
    without replacement, are replaced by a label drawn uniformly from the *other*
    :math:`K - 1` classes; the rest are kept. Each label is therefore corrupted with
    probability :math:`p` and, when corrupted, becomes any given other class with probability
    :math:`p / (K - 1)` (the "symmetric" noise of the noisy-label literature, whose transition
    matrix has :math:`1 - p` on the diagonal and :math:`p / (K - 1)` elsewhere); fixing the
    count makes the realised fraction exactly :math:`p` (up to rounding) instead of a
    binomial draw. A corrupted label never equals its original.

    The draw depends only on ``seed``, ``fraction``, ``num_classes`` and ``len(labels)``
    (never on the global RNG), so every optimizer and every training seed sees the same
    corrupted labels.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must be in [0, 1], got {fraction}")
    if num_classes < 2 and fraction > 0:
        raise ValueError("label noise needs at least 2 classes")
    y = labels.to(torch.int64)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    count = round(fraction * n)
    which = torch.randperm(n, generator=gen)[:count]
    # an offset in 1..K-1 added modulo K: uniform over the other classes, never the same one
    offset = torch.randint(1, max(2, num_classes), (count,), generator=gen)
    noisy = y.clone()
    noisy[which] = (y[which] + offset) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[which] = True
    return noisy, mask


try:  # Lightning is an optional dependency (the `bench` extra)
    import lightning.pytorch as pl

    _LightningDataModule = pl.LightningDataModule
except ImportError:  # pragma: no cover - exercised only without the extra
    _LightningDataModule = object  # type: ignore[assignment,misc]


class ArrayDataModule(_LightningDataModule):
    """Serves an :class:`ArraySplits` with a seeded shuffle.

    ``seed`` fixes the order of training batches (the same for every optimizer).
    ``holdout`` > 0 carves a fixed held-out split out of the training data and evaluates on it
    instead of the test set (use it for tuning). ``train_subset`` keeps only the first k
    training examples of a fixed permutation (quick runs). ``label_noise`` > 0 corrupts that
    fraction of the *training* labels (after the held-out split and the subset are taken, so
    the evaluation set stays clean) with :func:`symmetric_label_noise` seeded by
    ``label_noise_seed``; the clean training labels stay in ``train_clean_y`` and the
    corrupted positions in ``train_noise_mask``. The data come from ``splits``, else from
    ``loader(data_root, download)`` at :meth:`setup` (``benchmarks.registry.data_module``
    gives each data set's).
    """

    def __init__(
        self,
        data_root: str | Path | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        seed: int = 0,
        holdout: float = 0.0,
        train_subset: int | None = None,
        download: bool = True,
        splits: ArraySplits | None = None,
        label_noise: float = 0.0,
        label_noise_seed: int = 0,
        loader: Callable[[str | Path | None, bool], ArraySplits] | None = None,
    ) -> None:
        super().__init__()
        self.data_root = data_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.holdout = holdout
        self.train_subset = train_subset
        self.download = download
        self.splits = splits
        self.loader = loader
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
        self.label_noise = label_noise
        self.label_noise_seed = label_noise_seed
        self.train_clean_y: torch.Tensor | None = None
        self.train_noise_mask: torch.Tensor | None = None
        self._ready = False

    def load(self) -> ArraySplits:
        if self.loader is None:
            raise ValueError("an ArrayDataModule needs splits or a loader")
        return self.loader(self.data_root, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self.splits is None:
            self.splits = self.load()
        s = self.splits
        tx, ty = s.train_x, s.train_y
        if self.holdout > 0:
            train_idx, hold_idx = holdout_split(len(ty), self.holdout)
            ex, ey = tx[hold_idx], ty[hold_idx]
            tx, ty = tx[train_idx], ty[train_idx]
        else:
            ex, ey = s.test_x, s.test_y
        if self.train_subset:
            keep = torch.randperm(len(ty), generator=torch.Generator().manual_seed(4321))
            keep = keep[: self.train_subset].sort().values
            tx, ty = tx[keep], ty[keep]
        self.train_clean_y = ty
        self.train_noise_mask = torch.zeros(len(ty), dtype=torch.bool)
        if self.label_noise > 0:
            ty, self.train_noise_mask = symmetric_label_noise(
                ty, s.num_classes, self.label_noise, self.label_noise_seed
            )
        self.train_set = NormalizedTensorDataset(tx, ty, s.mean, s.std)
        self.eval_set = NormalizedTensorDataset(ex, ey, s.mean, s.std)
        self.num_classes = s.num_classes
        self.image_shape = s.image_shape
        self._ready = True

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=True,  # every step sees a full batch: equal work per step for all optimizers
            collate_fn=_identity_collate,
        )

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.eval_batch_size, collate_fn=_identity_collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_set)

    def train_eval_dataloader(self, max_examples: int | None = None) -> DataLoader:
        """The training split (or a fixed, seed-independent subset of ``max_examples`` of
        it) in fixed order, for the final training loss."""
        ds: Dataset = self.train_set
        if max_examples and max_examples < len(self.train_set):
            ds = torch.utils.data.Subset(ds, self.train_eval_indices(max_examples).tolist())
        return self._eval_loader(ds)

    def train_eval_indices(self, max_examples: int | None = None) -> torch.Tensor:
        """Indices into the training split used by :meth:`train_eval_dataloader`."""
        n = len(self.train_set)
        if max_examples and max_examples < n:
            keep = torch.randperm(n, generator=torch.Generator().manual_seed(99))
            return keep[:max_examples].sort().values
        return torch.arange(n)

    @property
    def steps_per_epoch(self) -> int:
        self.setup()
        return len(self.train_set) // self.batch_size
