"""Each loader on small files generated in exactly the real on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import datasets as D
from benchmarks import registry


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in D.FASHION_FILES.items():
        _write_idx(root / stem, arrays[key], gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_roundtrip(tmp_path, gz):
    arrays = make_fashion(tmp_path / "fm", gz=gz)
    s = D.load_fashion_mnist(tmp_path / "fm", download=False)
    assert s.train_x.shape == (12, 1, 28, 28) and s.train_x.dtype == torch.uint8
    assert s.test_x.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(s.train_x[:, 0].numpy(), arrays["train_x"])
    np.testing.assert_array_equal(s.test_y.numpy(), arrays["test_y"])
    assert s.train_y.dtype == torch.int64 and s.num_classes == 10


def test_fashion_mnist_found_in_subdirectory_of_data_root(tmp_path):
    make_fashion(tmp_path / "fashion-mnist")
    assert len(D.load_fashion_mnist(tmp_path, download=False).train_y) == 12


def test_fashion_mnist_missing_names_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(D, "DEFAULT_CACHE", tmp_path / "cache")
    with pytest.raises(D.DatasetError) as err:
        D.load_fashion_mnist(None, download=False)
    msg = str(err.value)
    assert str(tmp_path / "debian") in msg and str(tmp_path / "cache" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg


def test_fashion_mnist_data_root_never_falls_back_to_the_system_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(D, "DEFAULT_CACHE", tmp_path / "cache")
    make_fashion(tmp_path / "debian", n_train=7)
    (tmp_path / "empty").mkdir()
    assert D.load_fashion_mnist(None, download=False).source == str(tmp_path / "debian")
    with pytest.raises(D.DatasetError) as err:
        D.load_fashion_mnist(tmp_path / "empty", download=False)
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg
    assert f"a copy exists in {tmp_path / 'debian'}: drop --data-root to use it" in msg


def test_load_dataset_says_where_the_data_came_from(tmp_path, capsys):
    make_fashion(tmp_path / "fm", n_train=9, n_test=4)
    s = registry.load_dataset("fashion-mnist", tmp_path / "fm", download=False)
    assert s.source == str(tmp_path / "fm")
    err = capsys.readouterr().err
    assert f"[data] fashion-mnist: 9 train / 4 test images from {tmp_path / 'fm'}" in err
    registry.load_dataset("digits")
    err = capsys.readouterr().err
    assert "[data] digits: 1348 train / 449 test images from scikit-learn" in err


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(D.DatasetError, match="unsigned-byte IDX"):
        D.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 10) + b"\0" * 3)
    with pytest.raises(D.DatasetError, match="announces"):
        D.read_idx(short)


def make_svhn(root: Path, n_train: int = 7, n_test: int = 4):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 means digit 0
        y[0, 0] = 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def test_svhn_mat_format(tmp_path):
    raw = make_svhn(tmp_path / "svhn")
    s = D.load_svhn(tmp_path, download=False)  # found in <root>/svhn
    x, y = raw["train"]
    assert s.train_x.shape == (7, 3, 32, 32) and s.test_x.shape == (4, 3, 32, 32)
    # element (n, c, h, w) of ours is X[h, w, c, n] of the .mat file
    assert s.train_x[3, 2, 5, 7].item() == x[5, 7, 2, 3]
    np.testing.assert_array_equal(s.train_x[1].numpy(), x[..., 1].transpose(2, 0, 1))
    expected = np.where(y[:, 0] == 10, 0, y[:, 0])
    np.testing.assert_array_equal(s.train_y.numpy(), expected)
    assert s.train_y[0].item() == 0 and s.train_y.max() <= 9


def test_svhn_missing_and_malformed(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEFAULT_CACHE", tmp_path / "cache")
    with pytest.raises(D.DatasetError) as err:
        D.load_svhn(tmp_path / "nothing", download=False)
    assert str(tmp_path / "nothing") in str(err.value) and "train_32x32.mat" in str(err.value)
    from scipy.io import savemat

    (tmp_path / "bad").mkdir()
    for split in ("train", "test"):
        savemat(
            tmp_path / "bad" / f"{split}_32x32.mat",
            {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)},
        )
    with pytest.raises(D.DatasetError, match=r"expected \(32, 32, 3, 2\)"):
        D.load_svhn(tmp_path / "bad", download=False)


def make_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819"), per_class: int = 3):
    from PIL import Image

    colors = {wnids[0]: (200, 30, 30), wnids[1]: (30, 30, 200)}
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        boxes = []
        for i in range(per_class):
            Image.new("RGB", (64, 64), colors[w]).save(d / f"{w}_{i}.JPEG", "JPEG")
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63")
        (root / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    ann = []
    for j, w in enumerate([wnids[1], wnids[0], wnids[1]]):
        Image.new("RGB", (64, 64), colors[w]).save(root / "val" / "images" / f"val_{j}.JPEG")
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled official test split: ignored
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "test" / "images" / "test_0.JPEG")


def test_tiny_imagenet_layout(tmp_path):
    make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    s = D.load_tiny_imagenet(tmp_path)  # found as <root>/tiny-imagenet-200
    assert s.num_classes == 2
    assert s.train_x.shape == (6, 3, 64, 64) and s.test_x.shape == (3, 3, 64, 64)
    assert s.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert s.test_y.tolist() == [1, 0, 1]
    # red class is red, blue class is blue (JPEG is lossy: compare loosely)
    red = s.train_x[0].float().mean(dim=(1, 2))
    blue = s.test_x[0].float().mean(dim=(1, 2))
    assert red[0] > 150 and red[2] < 80 and blue[2] > 150 and blue[0] < 80


def test_tiny_imagenet_missing_and_bad_annotation(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEFAULT_CACHE", tmp_path / "cache")
    with pytest.raises(D.DatasetError) as err:
        D.load_tiny_imagenet(tmp_path / "none")
    assert "wnids.txt" in str(err.value) and "tiny-imagenet-200.zip" in str(err.value)
    root = tmp_path / "t"
    make_tiny_imagenet(root)
    with open(root / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(D.DatasetError, match="n99999999"):
        D.load_tiny_imagenet(root)


def _batches(dm):
    return [y.tolist() for _, y in dm.train_dataloader()]


def test_datamodule_same_order_per_seed_and_disjoint_holdout():
    splits = D.load_digits_splits()
    a = D.ArrayDataModule(batch_size=64, seed=3, splits=splits)
    b = D.ArrayDataModule(batch_size=64, seed=3, splits=splits)
    c = D.ArrayDataModule(batch_size=64, seed=4, splits=splits)
    for dm in (a, b, c):
        dm.setup()
    assert _batches(a) == _batches(b)
    assert _batches(a) != _batches(c)
    assert a.steps_per_epoch == len(splits.train_y) // 64 == len(_batches(a))
    x, _y = next(iter(a.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8)
    assert abs(float(x.mean())) < 0.5  # normalised
    h = D.ArrayDataModule(batch_size=64, seed=3, holdout=0.2, splits=splits)
    h.setup()
    train_idx, hold_idx = D.holdout_split(len(splits.train_y), 0.2)
    assert len(set(train_idx.tolist()) & set(hold_idx.tolist())) == 0
    assert len(h.train_set) + len(h.eval_set) == len(splits.train_y)
    assert len(h.eval_set) == round(0.2 * len(splits.train_y))
