"""The run folder: each stage's arrays (safetensors) beside the JSON of the arguments that made them.

A stage counts as done when its JSON exists (written last) and records the same arguments; a
stage on disk with other arguments is refused unless the store was opened with overwrite=True.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stride.errors import StrideError

STAGES = "stages"
OUTPUTS = ("scores.safetensors", "info.json", "top.jsonl")


def to_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
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


def file_digest(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file, or of every file of a folder (names and contents), streamed."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(block):
                digest.update(chunk)
    return digest.hexdigest()


def module_digest(model: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and values of its parameters and buffers)."""
    return tensors_digest(model.state_dict())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RunStore:
    """Stage outputs of one run under `root/stages`, final outputs under `root`."""

    def __init__(self, root: str | Path, overwrite: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StrideError(f"output path exists and is not a folder: {self.root}")
        if overwrite:
            shutil.rmtree(self.root / STAGES, ignore_errors=True)
            for name in OUTPUTS:
                (self.root / name).unlink(missing_ok=True)
        (self.root / STAGES).mkdir(parents=True, exist_ok=True)

    def _meta_path(self, stage: str) -> Path:
        return self.root / STAGES / f"{stage}.json"

    def _arrays_path(self, stage: str) -> Path:
        return self.root / STAGES / f"{stage}.safetensors"

    def checkpoint_path(self, stage: str, args: dict[str, Any]) -> Path:
        """Where a stage keeps its resumable checkpoint; refuses one made with other arguments."""
        path = self.root / STAGES / f"{stage}.ckpt"
        marker = self.root / STAGES / f"{stage}.ckpt.json"
        if marker.exists():
            self._check_same(stage + " checkpoint", json.loads(marker.read_text())["args"], args)
        else:
            write_json(marker, {"args": args})
        return path

    def _check_same(self, stage: str, saved: dict[str, Any], args: dict[str, Any]) -> None:
        args = to_json(args)
        if saved != args:
            keys = sorted(k for k in set(saved) | set(args) if saved.get(k) != args.get(k))
            raise StrideError(
                f"{self.root} holds a run whose '{stage}' stage used other settings ({', '.join(keys)}); "
                "pass --overwrite to replace it or choose another output folder"
            )

    def done(self, stage: str, args: dict[str, Any]) -> bool:
        """True when the stage is on disk with these arguments; StrideError if with others."""
        meta = self._meta_path(stage)
        if not meta.exists():
            return False
        self._check_same(stage, json.loads(meta.read_text())["args"], args)
        return True

    def save(self, stage: str, tensors: dict[str, torch.Tensor], args: dict[str, Any], info: dict[str, Any]) -> None:
        """Write the arrays, then the JSON that marks the stage done; drop its checkpoint."""
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self._arrays_path(stage)))
        write_json(self._meta_path(stage), {"args": args, "info": info})
        for suffix in (".ckpt", ".ckpt.json"):
            (self.root / STAGES / f"{stage}{suffix}").unlink(missing_ok=True)

    def adopt_training_stages(self, other: str | Path) -> None:
        """Copy the finished stages of run folder `other` that do not depend on the queries (their
        arguments name no `queries`), so that a run on new queries reuses them; stages already
        here are kept."""
        source = Path(other) / STAGES
        if not source.is_dir():
            raise StrideError(f"no run folder to reuse at {other} (its {STAGES}/ folder is missing)")
        for meta in sorted(source.glob("*.json")):
            arrays = meta.with_suffix(".safetensors")
            recorded = json.loads(meta.read_text())
            if "args" not in recorded or "queries" in recorded["args"] or not arrays.is_file():
                continue
            if self._meta_path(meta.stem).exists():
                continue
            shutil.copy2(arrays, self._arrays_path(meta.stem))
            shutil.copy2(meta, self._meta_path(meta.stem))

    def load(self, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The arrays and the recorded info of a finished stage."""
        meta = json.loads(self._meta_path(stage).read_text())
        return load_file(str(self._arrays_path(stage))), meta["info"]
