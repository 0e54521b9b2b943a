"""Files the command line reads for classifiers: a model factory in the user's Python file, weights, arrays.

Weights and data are safetensors, `.npz` (read without pickle) or torch files of named tensors
(read with weights_only=True); data files hold `inputs` and `labels`. Nothing is unpickled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stride.errors import StrideError


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """`path/to/file.py:function` -> the function (the file is run as a module, like any import)."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise StrideError(f"--factory must look like path/to/file.py:function, got {spec!r}")
    if not Path(path).is_file():
        raise StrideError(f"factory file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"stride_user_factory_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise StrideError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise StrideError(f"{path} defines no function {name!r}")
    return factory


def _read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Named tensors of a .safetensors, .npz (without pickle) or torch file (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise StrideError(f"{what} file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise StrideError(f"cannot read {path} as safetensors ({exc})") from None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.as_tensor(archive[name]) for name in archive.files}
    if path.suffix == ".npy":
        raise StrideError(f"{path}: a .npy file holds one array; pass {what} as .npz or .safetensors holding named "
                          "arrays ('inputs' and 'labels' for data)")  # fmt: skip
    try:
        tensors = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for such files
        reason = str(exc).splitlines()[0]
        raise StrideError(f"cannot read {path} as a torch file of named tensors ({reason}); save it with "
                          "safetensors or torch.save(state_dict)") from None  # fmt: skip
    if not isinstance(tensors, dict):
        raise StrideError(f"{path} must hold named tensors, found a {type(tensors).__name__}")
    return tensors


def build_model(factory: Callable[[], nn.Module], weights: str | Path | None) -> nn.Module:
    """A model from the factory, with its state loaded from `weights` when given (strictly)."""
    model = factory()
    if not isinstance(model, nn.Module):
        raise StrideError(f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is None:
        return model
    try:
        model.load_state_dict(_read_tensors(weights, "weights"))
    except (RuntimeError, TypeError) as exc:
        raise StrideError(f"{weights} does not fit the factory's model: {exc}") from exc
    return model


def load_arrays(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """`inputs` and `labels` from a .npz, .safetensors or torch file."""
    arrays = _read_tensors(path, "data")
    missing = {"inputs", "labels"} - set(arrays)
    if missing:
        raise StrideError(f"{path} lacks {sorted(missing)} (found {sorted(arrays)})")
    return arrays["inputs"], arrays["labels"]
