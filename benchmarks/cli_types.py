"""Argument types and checks shared by every benchmark CLI (and ``scripts/hgpso-train``).

Each CLI validates every argument while parsing (``type=`` functions below, or one check
right after parsing through :func:`require`), so nonsense such as ``--epochs -1`` or
``--device tpu9`` ends in one line on stderr and exit code 2 before any data is loaded or
any file is written:

    hgpso-train: error: argument --epochs: expected a number > 0, got '-1' (see --help)

An output directory is checked for being writable (or creatable) but not created: a
refused command leaves nothing behind.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

__all__ = [
    "ArgumentParser",
    "boolean",
    "count_list",
    "device",
    "finite_float",
    "float_in",
    "fraction",
    "fraction_open",
    "int_at_least",
    "none_or_positive_float",
    "nonneg_float",
    "nonneg_int",
    "out_file",
    "out_file_mkdir",
    "positive_float",
    "positive_int",
    "require",
    "require_writable_dir",
    "seed",
    "unit_interval",
    "writable_dir",
]

_MAX_SEED = 2**32 - 1  # what numpy and Lightning's seed_everything accept


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``prog: error: ... (see
    --help)`` and exit code 2 (the stock parser prints the whole usage first, dozens of
    lines for ``hgpso-train``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def require(parser: argparse.ArgumentParser, ok: bool, message: str) -> None:
    """A check made after parsing (one that involves two arguments): a usage error if not
    ``ok``."""
    if not ok:
        parser.error(message)


def _bad(expected: str, s: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")


def _int(s: str, expected: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise _bad(expected, s) from None


def _float(s: str, expected: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise _bad(expected, s) from None
    if not math.isfinite(v):
        raise _bad(expected, s)
    return v


def int_at_least(low: int) -> Callable[[str], int]:
    """A type for an integer >= ``low`` (a swarm's population: ``int_at_least(2)``)."""

    def check(s: str) -> int:
        v = _int(s, f"an integer >= {low}")
        if v < low:
            raise _bad(f"an integer >= {low}", s)
        return v

    check.__name__ = f"int_at_least_{low}"
    return check


positive_int = int_at_least(1)


def nonneg_int(s: str) -> int:
    v = _int(s, "an integer >= 0")
    if v < 0:
        raise _bad("an integer >= 0", s)
    return v


def seed(s: str) -> int:
    expected = f"a seed in [0, {_MAX_SEED}]"
    v = _int(s, expected)
    if not 0 <= v <= _MAX_SEED:
        raise _bad(expected, s)
    return v


def finite_float(s: str) -> float:
    return _float(s, "a finite number")


def positive_float(s: str) -> float:
    v = _float(s, "a number > 0")
    if v <= 0:
        raise _bad("a number > 0", s)
    return v


def nonneg_float(s: str) -> float:
    v = _float(s, "a number >= 0")
    if v < 0:
        raise _bad("a number >= 0", s)
    return v


def _interval(s: str, low: float, high: float, low_open: bool, high_open: bool) -> float:
    expected = f"a fraction in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    v = _float(s, expected)
    if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
        raise _bad(expected, s)
    return v


def fraction(s: str) -> float:
    """A fraction in ``[0, 1)`` (a share held out, a share of labels corrupted)."""
    return _interval(s, 0.0, 1.0, low_open=False, high_open=True)


def fraction_open(s: str) -> float:
    """A fraction in ``(0, 1)``."""
    return _interval(s, 0.0, 1.0, low_open=True, high_open=True)


def unit_interval(s: str) -> float:
    """A number in ``[0, 1]``."""
    return _interval(s, 0.0, 1.0, low_open=False, high_open=False)


def float_in(low: float, high: float) -> Callable[[str], float]:
    """A type for a number in ``[low, high]`` (an LLM temperature: ``float_in(0, 2)``)."""

    def check(s: str) -> float:
        expected = f"a number in [{low:g}, {high:g}]"
        v = _float(s, expected)
        if not low <= v <= high:
            raise _bad(expected, s)
        return v

    check.__name__ = f"float_in_{low:g}_{high:g}"
    return check


def one_of(*choices: str) -> Callable[[str], str]:
    """A type for one of ``choices`` (a hyperparameter flag that names a mode)."""

    def check(s: str) -> str:
        if s not in choices:
            raise _bad("one of " + ", ".join(choices), s)
        return s

    check.__name__ = "one_of_" + "_".join(choices)
    return check


def none_or_positive_float(s: str) -> float | None:
    if s.lower() in ("none", "null", ""):
        return None
    return positive_float(s)


def boolean(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise _bad("true/false", s)


def count_list(s: str) -> str:
    """Comma-separated counts >= 1, each an integer or in ``1e6`` notation (``16,64``,
    ``1e6,1e7``); returned as given, for the CLI to split."""
    parts = [p.strip() for p in s.split(",")]
    expected = "comma-separated counts >= 1 (e.g. 16,64 or 1e6,1e7)"
    for part in parts:
        try:
            v = float(part)
        except ValueError:
            raise _bad(expected, s) from None
        if not (math.isfinite(v) and v >= 1 and v == int(v)):
            raise _bad(expected, s)
    return s


def device(s: str) -> str:
    """A device string torch parses (``cpu``, ``cuda``, ``cuda:1``, ``mps``) and that is
    present on this machine."""
    import torch  # the CLIs import it next anyway; parsing needs it for this check only

    try:
        d = torch.device(s)
    except (RuntimeError, ValueError):
        raise _bad("a torch device such as cpu, cuda, cuda:1 or mps", s) from None
    if d.type == "cpu":
        return s
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{s!r} requested but CUDA is not available")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{s!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return s
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{s!r} requested but MPS is not available")
        return s
    raise _bad("a device the benchmarks run on: cpu, cuda[:N] or mps", s)


def _writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, not guessed from the mode
    bits: root passes ``os.access`` on a read-only mount). The probe is an unnamed
    temporary file where the OS has them, so nothing is left behind."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        return False
    return True


def _dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an output directory, or ``None``."""
    if path.exists():
        if not path.is_dir():
            return f"{str(path)!r} exists and is not a directory"
        if not _writable(path):
            return f"{str(path)!r} is not writable"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(path)!r} cannot be created: {str(parent)!r} is not a directory"
    if not _writable(parent):
        return f"{str(path)!r} cannot be created: {str(parent)!r} is not writable"
    return None


def writable_dir(s: str) -> Path:
    """An output directory that exists and is writable, or can be created (not created
    here, so that a refused command leaves nothing behind)."""
    problem = _dir_problem(Path(s))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return Path(s)


def out_file(s: str) -> Path:
    """An output file: not a directory, in an existing writable directory (the CLIs write
    it at the end, without creating directories: a missing one is refused here, before
    the run rather than after it)."""
    path = Path(s)
    parent = path.absolute().parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a directory, expected a file name")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {s!r}: no directory {str(parent)!r}")
    if not _writable(parent):
        raise argparse.ArgumentTypeError(f"cannot write {s!r}: {str(parent)!r} is not writable")
    return path


def out_file_mkdir(s: str) -> Path:
    """An output file whose directory the CLI creates if missing: not a directory, in a
    directory that exists writable or can be created."""
    path = Path(s)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a directory, expected a file name")
    problem = _dir_problem(path.absolute().parent)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"cannot write {s!r}: {problem}")
    return path


def require_writable_dir(parser: argparse.ArgumentParser, path: Path, flag: str) -> None:
    """:func:`writable_dir` for a directory known only after parsing (a default that
    depends on another argument)."""
    problem = _dir_problem(path)
    require(parser, problem is None, f"argument {flag}: {problem}")
