"""Writing named arrays: safetensors files written atomically, and failed writes as OSError."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from stride.errors import StrideError


def save_arrays(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (a killed run never leaves half a file). A write that fails
    for lack of room or permission raises OSError with its errno, which the CLI reports in one line."""
    partial = path.with_name(path.name + ".partial")
    try:
        on_cpu = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        save_file(on_cpu, str(partial), metadata=metadata)
    except SafetensorError as exc:
        partial.unlink(missing_ok=True)
        failure = write_failure(exc, path)
        if failure is None:
            raise
        raise failure from None
    os.replace(partial, path)


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_failure(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """The OSError behind a failed write (no room, read-only, no permission), also when a library
    reports it as a SafetensorError "... (os error N)"; None for any other exception."""
    if isinstance(exc, OSError):
        return exc if exc.errno in WRITE_FAILURES else None
    code = re.search(r"os error (\d+)", str(exc)) if isinstance(exc, SafetensorError) else None
    if code is None or int(code.group(1)) not in WRITE_FAILURES:
        return None
    return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path) if path else None)


def require_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start a step that memory-maps `needed_bytes` into `folder` when its disk lacks the room
    (a full disk under a memory map kills the process with SIGBUS, past any error handling)."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise StrideError(
            f"{what} needs about {needed_bytes / 2**20:.1f} MiB in {folder}, but its disk has {free / 2**20:.1f} MiB "
            "free; free some space and rerun (finished stages are kept)"
        )
