"""Retraining ground truth: train on many random subsets (several seeds), record every query's loss.

Regimes: "finetune" (each retrain fine-tunes a fixed base model; the seed changes the data order)
and "scratch" (each retrain re-initialises the attributed model's architecture; the seed changes
the initialisation and the data order). Protocols: "keep" (subsets of a fraction alpha of the
training set, as TRAK/dattri with alpha=0.5 or the STRIDE paper with alpha=0.3) and
"leave-out" (drop a fraction, e.g. 0.05, as Bergson/MAGIC).

The folder holds `subsets.safetensors` + `spec.json`, one file per finished retrain under
`retrains/`, so a killed run continues where it stopped, and at the end `losses.safetensors`
([seeds, subsets, queries]) and `summary.json` (with the seed-vs-seed ceiling).

The retraining machinery (`claim_folder`, `run_retrains` and its worker functions) is shared with
`stride.evaluation.counterfactual`: a job is (label, seed, kept training indices, output file).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from stride.core.arrays import save_arrays
from stride.core.digest import content_digest, file_digest
from stride.core.jsonio import to_json, write_json
from stride.errors import StrideError
from stride.lm_training import LMRecipe
from stride.models import model_digest
from stride.store import RUN_RECORD, STAGES, exclusive

REGIMES = ("finetune", "scratch")
PROTOCOLS = ("keep", "leave-out")


@dataclass
class GroundTruthSpec:
    """Everything that defines a ground-truth folder; a folder with another spec is refused."""

    model: str
    train: str
    queries: str
    regime: str = "finetune"
    base: str | None = None
    protocol: str = "keep"
    fraction: float = 0.5
    n_subsets: int = 64
    n_seeds: int = 2
    seed: int = 0
    recipe: dict[str, Any] = dataclasses.field(default_factory=lambda: dataclasses.asdict(LMRecipe()))

    def validate(self) -> None:
        if self.regime not in REGIMES:
            raise StrideError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.protocol not in PROTOCOLS:
            raise StrideError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.regime == "finetune" and not self.base:
            raise StrideError("the finetune regime needs --base (the model every retrain starts from)")
        if not 0.0 < self.fraction < 1.0:
            raise StrideError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.n_subsets < 3 or self.n_seeds < 1:
            raise StrideError("need at least 3 subsets and 1 seed")


def draw_subsets(n: int, n_subsets: int, protocol: str, fraction: float, seed: int) -> np.ndarray:
    """Bool [n_subsets, n]: keep round(fraction*n) examples, or leave round(fraction*n) out."""
    rng = np.random.default_rng(seed)
    size = max(1, round(fraction * n))
    kept = np.zeros((n_subsets, n), dtype=bool) if protocol == "keep" else np.ones((n_subsets, n), dtype=bool)
    for row in kept:
        row[rng.choice(n, size=size, replace=False)] = protocol == "keep"
    return kept


_WORKER: dict[str, Any] = {}


def _init_worker(spec: dict[str, Any], threads: int) -> None:
    """Load tokenizer and data once per worker process (kept alive across retrains).

    `spec` needs the keys model, train, queries, regime, base and recipe (as in `GroundTruthSpec`).
    A failure is kept and raised by the worker's first job: an initializer that raises makes the
    pool respawn the worker forever instead of failing."""
    try:
        torch.set_num_threads(threads)
        _WORKER.update(_load_inputs(spec))
    except Exception as exc:
        _WORKER["error"] = exc


def _load_inputs(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec, the model's config and the tokenized training and query sets of a retraining job."""
    from stride.data import load_data
    from stride.models import context_length, load_causal_lm

    model, tokenizer = load_causal_lm(spec["model"])
    length = min(spec["recipe"]["context"], context_length(model, tokenizer))
    if spec.get("base"):
        load_causal_lm(spec["base"])
    return dict(
        spec=spec, config=model.config, train=load_data(spec["train"], tokenizer, length, name="training set"),
        queries=load_data(spec["queries"], tokenizer, length, name="queries"),
    )  # fmt: skip


def _retrain(job: tuple[str, int, np.ndarray, str]) -> tuple[str, int, float]:
    """Train one model on the training examples at `indices` with one seed; save every query's loss.

    The job is (label for messages, seed, indices, output file); returns (label, seed, seconds)."""
    import transformers

    from stride.lm_training import example_losses, train_causal_lm

    if "error" in _WORKER:
        raise _WORKER["error"]
    label, seed, indices, path = job
    started = time.perf_counter()
    spec = _WORKER["spec"]
    recipe = LMRecipe.from_dict({**spec["recipe"], "seed": spec["recipe"]["seed"] + 1000 * seed})
    torch.manual_seed(recipe.seed)
    if spec["regime"] == "finetune":
        model = transformers.AutoModelForCausalLM.from_pretrained(spec["base"], local_files_only=True)
    else:
        model = transformers.AutoModelForCausalLM.from_config(_WORKER["config"])
    train_causal_lm(model, _WORKER["train"], recipe, indices=indices.tolist(), progress=False)
    losses = example_losses(model, _WORKER["queries"])
    if not torch.isfinite(losses).all():
        raise StrideError(f"retrain on {label} (seed {seed}) produced NaN/inf query losses")
    save_arrays({"losses": losses}, Path(path))
    return label, seed, time.perf_counter() - started


def claim_folder(out_dir: Path, identity: dict[str, Any], what: str) -> None:
    """Record `identity` in `out_dir/spec.json`, or refuse a folder whose spec.json records another
    or that holds an attribution run."""
    import json

    if (out_dir / RUN_RECORD).exists() or (out_dir / STAGES).is_dir() or (out_dir / "scores.safetensors").exists():
        raise StrideError(f"{out_dir} holds an attribution run, not {what}; choose another folder")
    spec_path = out_dir / "spec.json"
    if spec_path.exists():
        saved = json.loads(spec_path.read_text())
        if saved != to_json(identity):
            raise StrideError(f"{out_dir} holds {what} with another spec; choose another folder")
    else:
        (out_dir / "retrains").mkdir(parents=True, exist_ok=True)
        write_json(spec_path, identity)
    (out_dir / "retrains").mkdir(exist_ok=True)


def run_retrains(spec: dict[str, Any], todo: list[tuple[str, int, np.ndarray, str]], total: int, workers: int,
                 threads_per_worker: int, progress: bool) -> list[float]:  # fmt: skip
    """Run the unfinished retrain jobs `todo` (of `total`) on a spawn pool; seconds per retrain.

    The model and data are loaded here first, so a bad input fails before any worker starts; an
    error in a worker stops the pool and is raised here with its message."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise StrideError(f"workers must be at least 1, got {workers!r}")
    if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise StrideError(f"threads per worker must be at least 1, got {threads_per_worker!r}")
    seconds: list[float] = []
    if not todo:
        return seconds
    _load_inputs(to_json(spec))
    bar = tqdm(total=total, initial=total - len(todo), desc="retraining", disable=not progress, unit="model")
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(todo)), initializer=_init_worker,
                      initargs=(to_json(spec), threads_per_worker)) as pool:  # fmt: skip
        for _, _, took in pool.imap_unordered(_retrain, todo):
            seconds.append(took)
            bar.update(1)
        pool.close()  # let the workers exit on their own (terminate() leaks their semaphores)
        pool.join()
    bar.close()
    return seconds


def run_groundtruth(spec: GroundTruthSpec, out_dir: str | Path, workers: int = 2, threads_per_worker: int = 1,
                    progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) every retrain of `spec` into `out_dir`; return the summary."""
    from stride.data import read_examples

    spec.validate()
    out_dir = Path(out_dir)
    n_train = len(read_examples(spec.train))
    identity = {**dataclasses.asdict(spec), "train_digest": file_digest(spec.train),
                "queries_digest": file_digest(spec.queries)}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):
        claim_folder(out_dir, identity, "ground truth")
        subsets = draw_subsets(n_train, spec.n_subsets, spec.protocol, spec.fraction, spec.seed)
        save_arrays({"subsets": torch.as_tensor(subsets.astype(np.uint8))}, out_dir / "subsets.safetensors")
        return _retrain_and_collect(spec, out_dir, subsets, workers, threads_per_worker, progress)


def _retrain_and_collect(spec: GroundTruthSpec, out_dir: Path, subsets: np.ndarray, workers: int,
                         threads_per_worker: int, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Run the retrains not yet on disk, then write losses.safetensors and summary.json."""
    from stride.evaluation.lds import seed_ceiling

    n_train = subsets.shape[1]
    jobs = [
        (f"subset {j}", s, np.flatnonzero(subsets[j]), str(out_dir / "retrains" / f"{j:04d}_{s}.safetensors"))
        for s in range(spec.n_seeds) for j in range(spec.n_subsets)
    ]  # fmt: skip
    todo = [job for job in jobs if not Path(job[3]).exists()]
    started = time.perf_counter()
    seconds = run_retrains(dataclasses.asdict(spec), todo, len(jobs), workers, threads_per_worker, progress)
    losses = torch.stack([
        torch.stack([load_file(jobs[s * spec.n_subsets + j][3])["losses"] for j in range(spec.n_subsets)])
        for s in range(spec.n_seeds)
    ])  # fmt: skip
    digests = {"model_sha256": model_digest(spec.model), "train_sha256": content_digest(spec.train),
               "queries_sha256": content_digest(spec.queries)}  # fmt: skip
    save_arrays(
        {"losses": losses, "subsets": torch.as_tensor(subsets.astype(np.uint8))},
        out_dir / "losses.safetensors",
        digests,
    )
    summary: dict[str, Any] = {
        "n_train": n_train, "n_queries": losses.shape[2], "n_subsets": spec.n_subsets, "n_seeds": spec.n_seeds,
        "retrains_this_call": len(todo), "seconds_this_call": time.perf_counter() - started,
        "mean_seconds_per_retrain": float(np.mean(seconds)) if seconds else None,
        "workers": workers, "threads_per_worker": threads_per_worker,
    }  # fmt: skip
    if spec.n_seeds >= 2:
        ceiling = seed_ceiling(losses.numpy())
        summary["ceiling_single_seed"] = float(np.nanmean(ceiling))
    write_json(out_dir / "summary.json", summary)
    return summary


def _losses_file(folder: str | Path) -> Path:
    path = Path(folder) / "losses.safetensors"
    if not path.is_file():
        raise StrideError(f"{folder} holds no finished ground truth (losses.safetensors is missing)")
    return path


def load_groundtruth(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Subsets (bool [m, n]) and losses ([s, m, n_queries]) of a finished ground-truth folder."""
    from safetensors import SafetensorError

    path = _losses_file(folder)
    try:
        arrays = load_file(str(path))
    except SafetensorError as exc:
        raise StrideError(
            f"{path} cannot be read ({exc}); rerun stride groundtruth on {folder} to rewrite it"
        ) from None
    if set(arrays) != {"losses", "subsets"}:
        raise StrideError(f"{path} is not a ground-truth file (tensors {sorted(arrays)})")
    return arrays["subsets"].numpy().astype(bool), arrays["losses"].numpy()


def groundtruth_digests(folder: str | Path) -> dict[str, str]:
    """The digests of the model, training set and queries a ground-truth folder was made with (empty
    for a folder written before they were recorded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(_losses_file(folder)), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError:
        return {}
    return {key.removesuffix("_sha256"): value for key, value in metadata.items() if key.endswith("_sha256")}
