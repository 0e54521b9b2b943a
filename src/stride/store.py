"""The run folder: every method's expensive steps as named stages, cached, resumable and reusable.

A `Stage` names one step and records what shapes its output: its arguments (a dataclass) and the
digests of the inputs it reads (model, training set, queries, checkpoints). `RunStore.run` loads
a finished stage or computes and saves it: the arrays go to `stages/NAME.safetensors`, a library's
own files (TRAK's, kronfluence's) to the folder `stages/NAME/`, and `stages/NAME.json`, written
last, marks the stage done. A stage on disk made with other arguments or inputs is refused unless
the store was opened with overwrite=True, as kronfluence refuses stored factors of other
arguments; `clear` replaces them (--overwrite). A stage may keep a checkpoint while it runs; a
killed run resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stride.core.jsonio import to_json, write_json
from stride.errors import StrideError

STAGES = "stages"
OUTPUTS = ("scores.safetensors", "info.json", "top.jsonl")
QUERY_INPUT = "queries"

Tensors = dict[str, torch.Tensor]
StageOutput = tuple[Tensors, dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One cached step: its name in the run folder, the arguments dataclass that shapes its output
    and the digests of the inputs it reads (a stage that reads `queries` is query-side)."""

    name: str
    arguments: Any
    inputs: dict[str, str]

    def record(self) -> dict[str, Any]:
        """What the run folder keeps to recognise this stage: JSON of its arguments and inputs."""
        return to_json({"arguments": dataclasses.asdict(self.arguments), "inputs": self.inputs})


@dataclass
class StageResult:
    """A stage's arrays, the info it recorded, whether it was loaded from disk and its seconds."""

    tensors: Tensors
    info: dict[str, Any]
    reused: bool
    seconds: float


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys ({"a": {"b": 1}} -> {"a.b": 1})."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunStore:
    """Stage outputs of one run under `root/stages`, final outputs under `root`.

    `root=None` keeps the stages in a temporary folder that lives as long as the store (an
    in-memory run that still gives library methods a place for their files)."""

    def __init__(self, root: str | Path | None = None):
        self._scratch = tempfile.TemporaryDirectory(prefix="stride-run-") if root is None else None
        self.root = Path(self._scratch.name if self._scratch else root)  # type: ignore[arg-type]
        if self.root.exists() and not self.root.is_dir():
            raise StrideError(f"output path exists and is not a folder: {self.root}")
        (self.root / STAGES).mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Delete every stage and final output of the run (--overwrite; callers validate every
        setting first, so a rejected setting never costs a finished run)."""
        shutil.rmtree(self.root / STAGES, ignore_errors=True)
        for name in OUTPUTS:
            (self.root / name).unlink(missing_ok=True)
        (self.root / STAGES).mkdir(parents=True)

    def _path(self, name: str, suffix: str = "") -> Path:
        return self.root / STAGES / f"{name}{suffix}"

    def folder(self, stage: Stage) -> Path:
        """The folder where a stage keeps a library's own files (removed before the stage computes)."""
        return self._path(stage.name)

    def checkpoint(self, stage: Stage) -> Path:
        """Where a stage keeps its resumable checkpoint; refuses one made with other arguments."""
        marker = self._path(stage.name, ".ckpt.json")
        if marker.exists():
            self._check_same(stage.name + " checkpoint", json.loads(marker.read_text()), stage.record())
        else:
            write_json(marker, stage.record())
        return self._path(stage.name, ".ckpt")

    def _check_same(self, what: str, saved: dict[str, Any], wanted: dict[str, Any]) -> None:
        if "arguments" not in saved:
            raise StrideError(
                f"{self.root} holds a '{what}' stage written by an earlier version of stride; "
                "pass --overwrite to replace it or choose another output folder"
            )
        saved = _flatten({part: saved[part] for part in ("arguments", "inputs")})
        wanted = _flatten(wanted)
        differing = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
        if differing:
            raise StrideError(
                f"{self.root} holds a run whose '{what}' stage used other settings or inputs "
                f"({', '.join(differing)}); pass --overwrite to replace it or choose another output folder"
            )

    def _finished(self, stage: Stage) -> dict[str, Any] | None:
        """The recorded info of the stage when it is on disk with these arguments and inputs (None when
        it is not there); StrideError when it is there with others."""
        meta = self._path(stage.name, ".json")
        if not meta.exists():
            return None
        saved = json.loads(meta.read_text())
        self._check_same(stage.name, saved, stage.record())
        return saved["info"]

    def run(self, stage: Stage, compute: Callable[[], StageOutput]) -> StageResult:
        """Load a finished stage, or compute it (from a clean folder) and save it; timed either way."""
        info = self._finished(stage)
        if info is not None:
            tensors = load_file(str(self._path(stage.name, ".safetensors")))
            return StageResult(tensors, info, True, info.get("seconds", 0.0))
        shutil.rmtree(self._path(stage.name), ignore_errors=True)
        started = time.perf_counter()
        tensors, info = compute()
        seconds = time.perf_counter() - started
        info = {**info, "seconds": seconds}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self._path(stage.name, ".safetensors")))
        write_json(self._path(stage.name, ".json"), {**stage.record(), "info": info})
        for suffix in (".ckpt", ".ckpt.json"):
            self._path(stage.name, suffix).unlink(missing_ok=True)
        return StageResult(tensors, info, False, seconds)

    def adopt_training_stages(self, other: str | Path) -> None:
        """Copy the finished stages of run folder `other` that do not read the queries, so that a
        run on new queries reuses them; stages already here are kept."""
        source = Path(other) / STAGES
        if not source.is_dir():
            raise StrideError(f"no run folder to reuse at {other} (its {STAGES}/ folder is missing)")
        for meta in sorted(source.glob("*.json")):
            recorded = json.loads(meta.read_text())
            arrays = meta.with_suffix(".safetensors")
            if QUERY_INPUT in recorded.get("inputs", {QUERY_INPUT: ""}) or not arrays.is_file():
                continue
            if self._path(meta.stem, ".json").exists():
                continue
            shutil.copy2(arrays, self._path(meta.stem, ".safetensors"))
            library_files = source / meta.stem
            if library_files.is_dir():
                shutil.copytree(library_files, self._path(meta.stem), dirs_exist_ok=True)
            shutil.copy2(meta, self._path(meta.stem, ".json"))
