"""Small file helpers every part of a run dir uses."""
from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


ITEMS_FILE = "eval_items.json"  # a run's per-item evaluation values (written by evaluation, read by the report)
TUNING_FILE = "tuning.json"  # a tuned comparison's grid and choice (written by `tokreason compare`, read by the report)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new file, never half of one: a temp
    file in the same folder, flushed to disk, then os.replace. (Not mkstemp: its 0600 mode
    would stick to the result.)"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def flatten(nested: Mapping, separator: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (W&B summaries use "/" as the separator)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, separator, f"{name}{separator}"))
        else:
            flat[name] = value
    return flat
