"""The run folder: every method's expensive steps as named stages, cached, resumable and reusable.

A `Stage` names one step and records what shapes its output: its arguments (a dataclass) and the
digests of the inputs it reads (model, training set, queries, checkpoints). `RunStore.run` loads
a finished stage or computes and saves it: the arrays go to `stages/NAME.safetensors`, a library's
own files (TRAK's, kronfluence's) to the folder `stages/NAME/`, and `stages/NAME.json`, written
last, marks the stage done and records a checksum of the arrays and the library files; a stage
whose files no longer match it (truncated, edited) is reported and recomputed, never loaded. A
stage on disk made with other arguments or inputs is refused, as kronfluence refuses stored
factors of other arguments. A stage may keep a checkpoint while it runs; a killed run resumes
from it.

The run as a whole: `run.json` records the method and the digests of the model and the training
set, so a folder holding another method's run, or a run on another model or training set, is
refused before anything is computed (settings that differ are caught stage by stage, so a run
extended with a second design keeps its first); `clear`
(--overwrite) moves the old run aside and `finish` deletes it once the new run is written. A lock
file lets one process at a time use a run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from stride.core.arrays import save_arrays
from stride.core.digest import file_digest
from stride.core.jsonio import to_json, write_json
from stride.errors import StrideError

STAGES = "stages"
RUN_RECORD = "run.json"
OUTPUTS = ("scores.safetensors", "top_scores.safetensors", "scores_sparse.safetensors", "info.json", "top.jsonl",
           RUN_RECORD)  # fmt: skip
LOCK_FILE = ".lock"
REPLACED = ".replaced-"  # prefix of an old run moved aside by --overwrite until the new one is written
QUERY_INPUT = "queries"
FOREIGN_MARKERS = {"spec.json": "ground truth or counterfactual retrains", "retrains": "retrains"}

Tensors = dict[str, torch.Tensor]
StageOutput = tuple[Tensors, dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One cached step: its name in the run folder, the arguments dataclass that shapes its output
    and the digests of the inputs it reads (a stage that reads `queries` is query-side).
    `rewritten` names files of its library folder that the library rewrites after the stage
    (traker's experiments.json), which its checksum leaves out."""

    name: str
    arguments: Any
    inputs: dict[str, str]
    rewritten: tuple[str, ...] = ()

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


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock file: a second process using the same folder is refused, naming the
    process that holds it. The lock goes with the process, so a killed run leaves none behind."""
    handle = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StrideError(
            f"another stride process (pid {holder}) is using the folder {folder}; "
            "wait for it to finish or choose another output folder"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _differing(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two nested records."""
    saved, wanted = _flatten(saved), _flatten(wanted)
    return sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))


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

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunStore]:
        """Hold the run folder's lock (see `exclusive`) while the run uses it."""
        with exclusive(self.root):
            yield self

    def claim(self, identity: dict[str, Any], overwrite: bool) -> None:
        """Record in run.json which run this folder holds (method, model and training set); a folder
        holding another run is refused, naming what differs, or with `overwrite` cleared. Callers
        validate every setting first, so a rejected setting never costs a finished run."""
        for marker, what in FOREIGN_MARKERS.items():
            if (self.root / marker).exists():
                raise StrideError(
                    f"{self.root} holds {what} ({marker}), not an attribution run; choose another output folder"
                )
        wanted = to_json(identity)
        saved = self._saved_identity()
        if overwrite:
            self.clear()
        elif saved is not None and saved != wanted:
            differing = _differing(saved, wanted)
            raise StrideError(
                f"{self.root} holds another run ({', '.join(f'its {key} differs' for key in differing)}); "
                "pass --overwrite to replace it or choose another output folder"
            )
        write_json(self.root / RUN_RECORD, wanted)

    def _saved_identity(self) -> dict[str, Any] | None:
        path = self.root / RUN_RECORD
        if path.exists():
            return json.loads(path.read_text())
        info = self.root / "info.json"
        if info.exists():  # a run written before run.json existed: its method at least must match
            return {"method": json.loads(info.read_text()).get("method")}
        return None

    def clear(self) -> None:
        """Move every stage and final output of the run aside (one rename each), to be deleted by
        `finish` once the new run is written; a failed new run leaves the old one in `.replaced-*`."""
        present = [name for name in (STAGES, *OUTPUTS) if (self.root / name).exists()]
        if present:
            aside = Path(tempfile.mkdtemp(prefix=f"{REPLACED}{time.strftime('%Y%m%d-%H%M%S')}-", dir=self.root))
            for name in present:
                os.replace(self.root / name, aside / name)
        (self.root / STAGES).mkdir(parents=True)

    def finish(self) -> None:
        """Delete old runs moved aside by `clear` (call when the new run's outputs are written)."""
        for old in self.root.glob(REPLACED + "*"):
            shutil.rmtree(old, ignore_errors=True)

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
        differing = _differing({part: saved[part] for part in ("arguments", "inputs")}, wanted)
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
        damage = self._damage(stage.name, saved.get("checksum"))
        if damage:
            warnings.warn(f"stage '{stage.name}' in {self.root} is damaged ({damage}); recomputing it", stacklevel=3)
            meta.unlink()
            return None
        return saved["info"]

    def _checksum(self, stage: Stage) -> dict[str, Any]:
        """sha256 of a stage's arrays file and of each file in its library folder."""
        folder = self._path(stage.name)
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        return {
            "arrays": file_digest(self._path(stage.name, ".safetensors")),
            "files": {
                str(p.relative_to(folder)): file_digest(p)
                for p in files
                if str(p.relative_to(folder)) not in stage.rewritten
            },
        }

    def _damage(self, name: str, recorded: dict[str, Any] | None) -> str:
        """What no longer matches a finished stage's recorded checksum ('' when all does). Files a
        library adds to its folder later (TRAK's scores of a query set) are not checked."""
        if recorded is None:
            return "it has no checksum"
        arrays = self._path(name, ".safetensors")
        if not arrays.is_file():
            return f"{arrays.name} is missing"
        if file_digest(arrays) != recorded["arrays"]:
            return f"{arrays.name} changed since it was written"
        for relative, digest in recorded["files"].items():
            path = self._path(name) / relative
            if not path.is_file() or file_digest(path) != digest:
                return f"its library file {relative} is missing or changed"
        return ""

    def finished(self, stage: Stage) -> bool:
        """Whether the stage is on disk, whole, with these arguments and inputs (see `_finished`)."""
        return self._finished(stage) is not None

    def load(self, stage: Stage) -> StageResult | None:
        """A finished stage's arrays and info, or None when it is not on disk (see `_finished`)."""
        info = self._finished(stage)
        if info is None:
            return None
        tensors = load_file(str(self._path(stage.name, ".safetensors")))
        return StageResult(tensors, info, True, info.get("seconds", 0.0))

    def run(self, stage: Stage, compute: Callable[[], StageOutput]) -> StageResult:
        """Load a finished stage, or compute it (from a clean folder) and save it; timed either way."""
        finished = self.load(stage)
        if finished is not None:
            return finished
        shutil.rmtree(self._path(stage.name), ignore_errors=True)
        started = time.perf_counter()
        tensors, info = compute()
        seconds = time.perf_counter() - started
        info = {**info, "seconds": seconds}
        save_arrays(tensors, self._path(stage.name, ".safetensors"))
        write_json(self._path(stage.name, ".json"), {**stage.record(), "info": info, "checksum": self._checksum(stage)})
        for suffix in (".ckpt", ".ckpt.json"):
            self._path(stage.name, suffix).unlink(missing_ok=True)
        return StageResult(tensors, info, False, seconds)

    def adopt_training_stages(self, other: str | Path) -> None:
        """Copy the finished stages of run folder `other` that do not read the queries, so that a
        run on new queries reuses them; stages already here are kept. Run stores nested in its
        stages folder (a STRIDE partner's) are adopted into the same places here."""
        source = Path(other) / STAGES
        if not source.is_dir():
            raise StrideError(f"no run folder to reuse at {other} (its {STAGES}/ folder is missing)")
        for nested in sorted(source.glob(f"*/{STAGES}")):
            RunStore(self._path(nested.parent.name)).adopt_training_stages(nested.parent)
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
