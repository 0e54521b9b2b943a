"""Strict JSON: NaN and inf become null, numpy values plain numbers, and files are written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples and arrays lists, numpy scalars numbers, paths strings."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_json(v) for v in value.ravel()]
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a killed run never leaves half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(to_json(value), indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
