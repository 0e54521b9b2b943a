"""Counterfactual removal: drop a query's top-k attributed training examples, retrain, compare.

For every selected query q, every k and every seed s, retrain without the k training examples with
the highest scores for q (the most loss-lowering ones), and without k random examples drawn for
(q, s); the full-data retrain of seed s is the reference. A good attribution makes the query's
loss rise more when its top-k is removed than when k random examples are. Retrains reuse the
ground-truth machinery (`stride.evaluation.groundtruth`): same regimes ("finetune" from a fixed
base, "scratch" re-initialising the attributed model's architecture), the same per-seed recipe
seeds, a spawn pool of single-threaded workers kept alive, one file per finished retrain.

Removal sets are nested across k (the top-10 is a prefix of the top-20; so is each random set).
Each retrain records the loss of every query of the file, though only its own query is reported.

The folder holds `spec.json`, `removals.safetensors`, `retrains/` (resumable), and at the end
`losses.safetensors` (full [seeds, all queries]; top, random [k, selected queries, seeds, all
queries]) and `report.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from stride.core.arrays import save_arrays
from stride.core.digest import file_digest
from stride.core.jsonio import to_json, write_json
from stride.errors import StrideError
from stride.evaluation.groundtruth import REGIMES, claim_folder, run_retrains
from stride.evaluation.lds import bootstrap_ci
from stride.lm_training import LMRecipe
from stride.store import exclusive

DEFAULT_KS = (10, 20, 50)


@dataclass
class CounterfactualSpec:
    """Everything that defines a counterfactual folder; a folder with another spec is refused."""

    model: str
    train: str
    queries: str
    scores: str
    query_indices: list[int]
    ks: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_KS))
    regime: str = "finetune"
    base: str | None = None
    n_seeds: int = 2
    seed: int = 0
    recipe: dict[str, Any] = dataclasses.field(default_factory=lambda: dataclasses.asdict(LMRecipe()))

    def __post_init__(self) -> None:
        self.ks = sorted(int(k) for k in self.ks)
        self.query_indices = [int(q) for q in self.query_indices]

    def validate(self, n_train: int, n_queries: int) -> None:
        if self.regime not in REGIMES:
            raise StrideError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.regime == "finetune" and not self.base:
            raise StrideError("the finetune regime needs --base (the model every retrain starts from)")
        if self.n_seeds < 1:
            raise StrideError(f"need at least 1 seed, got {self.n_seeds}")
        if not self.ks or len(set(self.ks)) != len(self.ks) or any(not 1 <= k < n_train for k in self.ks):
            raise StrideError(f"k must be distinct values from 1 to {n_train - 1} (the training set has "
                              f"{n_train} examples), got {list(self.ks)}")  # fmt: skip
        if not self.query_indices:
            raise StrideError("no query selected")
        if len(set(self.query_indices)) != len(self.query_indices):
            raise StrideError(f"query indices must be distinct, got {list(self.query_indices)}")
        bad = [q for q in self.query_indices if not 0 <= q < n_queries]
        if bad:
            raise StrideError(f"query indices {bad} are out of range (the query file has {n_queries} queries)")


def select_queries(n_queries: int, subset: int | Sequence[int] | None, seed: int) -> list[int]:
    """All queries (None), `subset` of them drawn at random with `seed` (an int), or the given indices."""
    if subset is None:
        return list(range(n_queries))
    if isinstance(subset, (int, np.integer)):
        if not 1 <= subset <= n_queries:
            raise StrideError(f"queries subset size must be from 1 to {n_queries}, got {subset}")
        return sorted(int(q) for q in np.random.default_rng(seed).choice(n_queries, size=int(subset), replace=False))
    return [int(q) for q in subset]


def top_k_removals(scores: np.ndarray, query_indices: Sequence[int], k_max: int) -> np.ndarray:
    """Int [queries, k_max]: per query, the training examples with the highest scores, best first.

    Ties go to the lower training index, so the sets are deterministic."""
    return np.stack([np.argsort(-np.asarray(scores[q], dtype=np.float64), kind="stable")[:k_max]
                     for q in query_indices])  # fmt: skip


def random_removals(n_train: int, query_indices: Sequence[int], n_seeds: int, k_max: int, seed: int) -> np.ndarray:
    """Int [queries, seeds, k_max]: per query and seed, k_max distinct random training examples.

    Drawn from (seed, query index, retrain seed), so a query's sets do not depend on which other
    queries are selected; the first k of a row is the random set of size k."""
    return np.stack([
        np.stack([np.random.default_rng([seed, q, s]).choice(n_train, size=k_max, replace=False)
                  for s in range(n_seeds)])
        for q in query_indices
    ])  # fmt: skip


@dataclass
class CounterfactualReport:
    """Per k and selected query, the seed-mean increase of the query's loss over the full-data retrain.

    `top_increase` and `random_increase` are [k, queries] (removing the query's top-k, or k random
    examples); `full_loss` is [queries] (full-data loss, mean over seeds). Means over queries come
    with a percentile bootstrap CI over queries."""

    ks: list[int]
    query_indices: list[int]
    full_loss: np.ndarray
    top_increase: np.ndarray
    random_increase: np.ndarray
    n_seeds: int
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    run: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _summary(self, values: np.ndarray) -> dict[str, float | None]:
        low, high = bootstrap_ci(values, self.confidence, self.n_resamples, self.seed)
        return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}

    def per_k(self) -> list[dict[str, Any]]:
        """Per k: mean increase with CI for top-k removal, random removal and their difference."""
        return [
            {"k": k, "top_k": self._summary(self.top_increase[i]), "random": self._summary(self.random_increase[i]),
             "difference": self._summary(self.top_increase[i] - self.random_increase[i])}
            for i, k in enumerate(self.ks)
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, the per-k summary, per-query values (lists aligned with `ks`), run info."""
        per_query = [
            {"query": q, "full_loss": float(self.full_loss[j]),
             "top_k_increase": [float(v) for v in self.top_increase[:, j]],
             "random_increase": [float(v) for v in self.random_increase[:, j]],
             "difference": [float(v) for v in self.top_increase[:, j] - self.random_increase[:, j]]}
            for j, q in enumerate(self.query_indices)
        ]  # fmt: skip
        return to_json({
            "ks": list(self.ks), "n_queries": len(self.query_indices), "n_seeds": self.n_seeds,
            "confidence": self.confidence, "n_resamples": self.n_resamples, "seed": self.seed,
            "per_k": self.per_k(), "per_query": per_query, "run": self.run,
        })  # fmt: skip


def counterfactual_report(full: np.ndarray, top: np.ndarray, random: np.ndarray, ks: Sequence[int],
                          query_indices: Sequence[int], confidence: float = 0.95, n_resamples: int = 2000,
                          seed: int = 0) -> CounterfactualReport:  # fmt: skip
    """Report from retrained losses: full [seeds, all queries], top/random [k, queries, seeds, all queries].

    A query's increase is the mean over seeds of (removed-retrain loss - full-data loss of that seed),
    read at its own column of the query file."""
    full, top, random = (np.asarray(a, dtype=np.float64) for a in (full, top, random))
    n_seeds = full.shape[0]
    expected = (len(ks), len(query_indices), n_seeds, full.shape[1])
    if top.shape != expected or random.shape != expected:
        raise ValueError(f"top and random losses must have shape {expected}, got {top.shape} and {random.shape}")
    columns = np.asarray(query_indices, dtype=np.int64)
    rows = np.arange(len(columns))
    own_full = full[:, columns]  # [seeds, queries]
    own_top = top[:, rows, :, columns]  # [queries, k, seeds] (advanced indices go first)
    own_random = random[:, rows, :, columns]
    return CounterfactualReport(
        ks=[int(k) for k in ks], query_indices=[int(q) for q in query_indices], full_loss=own_full.mean(0),
        top_increase=(own_top - own_full.T[:, None, :]).mean(-1).T,
        random_increase=(own_random - own_full.T[:, None, :]).mean(-1).T,
        n_seeds=n_seeds, confidence=confidence, n_resamples=n_resamples, seed=seed,
    )  # fmt: skip


def _array_digest(scores: np.ndarray) -> str:
    array = np.ascontiguousarray(scores, dtype=np.float64)
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


def run_counterfactual(spec: CounterfactualSpec, scores: np.ndarray, out_dir: str | Path, workers: int = 2,
                       threads_per_worker: int = 1, progress: bool = True) -> CounterfactualReport:  # fmt: skip
    """Run (or resume) every retrain of `spec` with `scores` [n_queries, n_train] into `out_dir`."""
    from stride.data import read_examples

    n_train, n_queries = len(read_examples(spec.train)), len(read_examples(spec.queries))
    scores = np.asarray(scores)
    if scores.shape != (n_queries, n_train):
        raise StrideError(f"the scores have shape {list(scores.shape)} but the data has {n_queries} queries and "
                          f"{n_train} training examples (expected [n_queries, n_train])")  # fmt: skip
    if not np.isfinite(scores).all():
        raise StrideError("the scores contain NaN or inf")
    spec.validate(n_train, n_queries)
    out_dir = Path(out_dir)
    identity = {**dataclasses.asdict(spec), "train_digest": file_digest(spec.train),
                "queries_digest": file_digest(spec.queries), "scores_digest": _array_digest(scores)}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):
        claim_folder(out_dir, identity, "a counterfactual run")
        return _retrain_and_report(spec, scores, out_dir, n_queries, workers, threads_per_worker, progress)


def _retrain_and_report(spec: CounterfactualSpec, scores: np.ndarray, out_dir: Path, n_queries: int, workers: int,
                        threads_per_worker: int, progress: bool) -> CounterfactualReport:  # fmt: skip
    """Run the retrains not yet on disk, then write losses.safetensors and report.json."""
    n_train = scores.shape[1]
    removals = {
        "top": top_k_removals(scores, spec.query_indices, spec.ks[-1]),
        "random": random_removals(n_train, spec.query_indices, spec.n_seeds, spec.ks[-1], spec.seed),
    }
    save_arrays({name: torch.as_tensor(a) for name, a in removals.items()}, out_dir / "removals.safetensors")

    def job(kind: str, seed: int, k: int = 0, j: int = 0) -> tuple[str, int, np.ndarray, str]:
        """Retrain without the k examples of `kind` for the j-th selected query ("full": none removed)."""
        kept = np.ones(n_train, dtype=bool)
        if kind == "full":
            return "the full data", seed, np.flatnonzero(kept), str(out_dir / "retrains" / f"full_s{seed}.safetensors")
        q = spec.query_indices[j]
        kept[removals["top"][j, :k] if kind == "top" else removals["random"][j, seed, :k]] = False
        name = f"{kind}_q{q:04d}_k{k}_s{seed}.safetensors"
        return f"{kind} {k} removed for query {q}", seed, np.flatnonzero(kept), str(out_dir / "retrains" / name)

    seeds, positions = range(spec.n_seeds), range(len(spec.query_indices))
    full_jobs = [job("full", s) for s in seeds]
    removal_jobs = {kind: [[[job(kind, s, k, j) for s in seeds] for j in positions] for k in spec.ks]
                    for kind in ("top", "random")}  # [k][query][seed] per kind  # fmt: skip
    jobs = full_jobs + [one for nested in removal_jobs.values() for per_k in nested for per_q in per_k for one in per_q]
    todo = [one for one in jobs if not Path(one[3]).exists()]
    started = time.perf_counter()
    seconds = run_retrains(dataclasses.asdict(spec), todo, len(jobs), workers, threads_per_worker, progress)

    def stacked(nested: Any) -> torch.Tensor:
        """The query losses of a job (a tuple), or of nested lists of jobs stacked into one tensor."""
        if isinstance(nested, tuple):
            return load_file(nested[3])["losses"]
        return torch.stack([stacked(item) for item in nested])

    arrays = {"full": stacked(full_jobs), **{kind: stacked(nested) for kind, nested in removal_jobs.items()},
              "ks": torch.as_tensor(spec.ks), "query_indices": torch.as_tensor(spec.query_indices)}  # fmt: skip
    save_arrays(arrays, out_dir / "losses.safetensors")
    report = counterfactual_report(arrays["full"].numpy(), arrays["top"].numpy(), arrays["random"].numpy(),
                                   spec.ks, spec.query_indices, seed=spec.seed)  # fmt: skip
    report.run = {
        "n_train": n_train, "n_queries_in_file": n_queries, "regime": spec.regime, "retrains": len(jobs),
        "retrains_this_call": len(todo), "seconds_this_call": time.perf_counter() - started,
        "mean_seconds_per_retrain": float(np.mean(seconds)) if seconds else None,
        "workers": workers, "threads_per_worker": threads_per_worker,
    }  # fmt: skip
    write_json(out_dir / "report.json", report.to_dict())
    return report


def plot_counterfactual(report: CounterfactualReport, path: str | os.PathLike[str]) -> Path:
    """PNG: mean loss increase vs k for top-k and random removal, with the bootstrap CIs as bands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    summary = report.per_k()
    for key, label, color in (("top_k", "top-k attributed removed", "C0"), ("random", "k random removed", "0.4")):
        mean, low, high = (np.array([row[key][field] for row in summary], dtype=float)
                           for field in ("mean", "ci_low", "ci_high"))  # fmt: skip
        ax.plot(report.ks, mean, marker="o", color=color, label=label)
        ax.fill_between(report.ks, low, high, color=color, alpha=0.2)
    ax.axhline(0.0, color="0.7", linewidth=0.8)
    ax.set_xlabel("k (training examples removed)")
    ax.set_ylabel("query loss increase over full-data retrain")
    seeds = f"{report.n_seeds} seed" + ("s" if report.n_seeds > 1 else "")
    ax.set_title(f"counterfactual removal: {len(report.query_indices)} queries, {seeds}, {report.confidence:.0%} CI",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def load_counterfactual(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a finished counterfactual folder (full, top, random, ks, query_indices)."""
    path = Path(folder) / "losses.safetensors"
    if not path.is_file():
        raise StrideError(f"{folder} holds no finished counterfactual run (losses.safetensors is missing)")
    return {name: t.numpy() for name, t in load_file(str(path)).items()}
