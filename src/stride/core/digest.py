"""sha256 digests that name a stage's inputs: files and folders, modules, named tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


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


def content_digest(path: str | Path) -> str:
    """sha256 of what a file holds, whatever its name (a folder: `file_digest`): names data sets in
    the digests that tie scores to ground truth, so a renamed copy still matches."""
    path = Path(path)
    if path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
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
