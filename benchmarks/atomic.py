"""The one way the benchmarks write a result file: whole or not at all.

The text goes to a temporary file beside the target (named after this process, so parallel
shards writing into one ``--out`` never clash) and replaces the target in one rename, so an
interrupted run never leaves a half-written file behind for the next one to read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, newline="")  # verbatim: csv rows keep their \r\n
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    """``obj`` as JSON (one trailing newline) to ``path``, atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")
