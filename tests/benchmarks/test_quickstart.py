"""The README quickstart on a machine without Fashion-MNIST (scikit-learn's digits, offline)."""

from __future__ import annotations

import pytest

from benchmarks import datasets as D
from benchmarks import quickstart


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(D, "DEFAULT_CACHE", tmp_path / "cache")
    return tmp_path


def test_digits_fallback_repeats_the_hint_and_prints_reference_numbers(no_fashion_mnist, capsys):
    results = quickstart.main([])
    out = capsys.readouterr().out
    assert "using scikit-learn's 8x8 digits" in out
    assert "sudo apt-get install dataset-fashion-mnist" in out
    # the library's lr (its default gradient term's), one setting changed
    assert "epochs=20" in out and "library defaults except num_particles=4;" in out
    assert "reference acc" in out
    accuracy = {r["optimizer"]: r["test_accuracy"] for r in results}
    for name, ref in quickstart.REFERENCE["digits"].items():
        assert f"{ref:>14.4f}" in out
        # Same seed, same data: a working install lands near the reference (exact on the
        # machine that measured it; other CPUs or torch versions round differently).
        assert abs(accuracy[name] - ref) < 0.05, (name, accuracy[name], ref)


def test_no_reference_column_for_non_default_settings(no_fashion_mnist, capsys):
    quickstart.main(["--dataset", "digits", "--epochs", "1", "--particles", "2"])
    out = capsys.readouterr().out
    assert "epochs=1" in out and "reference acc" not in out


def test_empty_data_root_is_an_error_not_a_fallback(no_fashion_mnist, capsys):
    empty = no_fashion_mnist / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        quickstart.main(["--data-root", str(empty)])
    msg = str(exc.value)
    assert str(empty) in msg and "Only --data-root was searched" in msg
    assert "digits" not in capsys.readouterr().out  # nothing trained
