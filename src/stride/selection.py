"""`stride select`: pick training data for a target set from the scores of an attribution run.

The pool is the training set of the run; each candidate's scores over the target examples (the
run's queries) are aggregated by their mean, their max, or round-robin (each target in turn takes
its best remaining candidate). Nothing is recomputed: the scores are read from the run folder, or
an attribution run is made first in the output folder itself (`model_dir`). `selected.jsonl` holds
the pool's own lines, byte for byte, best first; `manifest.json` the settings, the chosen indices
and scores, a score summary and the provenance.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stride import __version__
from stride.config import StrideConfig
from stride.core.digest import content_digest
from stride.core.jsonio import write_json
from stride.data import read_examples
from stride.errors import StrideError

AGGREGATES = ("mean", "max", "round-robin")


@dataclass
class Selection:
    """Chosen pool indices, best first, with each one's aggregate score (round-robin: the score
    of the target that took it, whose index is in `targets`)."""

    indices: list[int]
    scores: list[float]
    targets: list[int] = field(default_factory=list)


def parse_budget(budget: str | int | float, n_pool: int) -> int:
    """A number of examples: an integer 1..n_pool, or a fraction in (0, 1] of the pool (at least 1)."""
    value: int | float
    if isinstance(budget, str):
        try:
            value = float(budget) if any(c in budget for c in ".eE") else int(budget)
        except ValueError:
            raise StrideError(f"budget must be a number of examples or a fraction in (0, 1], got {budget!r}") from None
    else:
        value = budget
    if isinstance(value, bool) or not np.isfinite(value):
        raise StrideError(f"budget must be a number of examples or a fraction in (0, 1], got {budget!r}")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise StrideError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(value * n_pool))
    if value < 1:
        raise StrideError(f"budget must be at least 1 example, got {budget}")
    if value > n_pool:
        raise StrideError(f"budget {value} is over the pool size {n_pool}")
    return value


def aggregate_select(scores: np.ndarray, aggregate: str, budget: int, keys: list[str] | None = None) -> Selection:
    """Choose `budget` candidates from scores [n_target, n_pool]; ties go to the lower pool index.

    `keys`: per candidate a dedup key; a candidate whose key was already chosen is skipped."""
    if aggregate not in AGGREGATES:
        raise StrideError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if aggregate == "round-robin":
        return _round_robin(scores, budget, keys)
    values = scores.mean(axis=0) if aggregate == "mean" else scores.max(axis=0)
    chosen, seen = Selection([], []), set()
    for index in np.argsort(-values, kind="stable"):
        if len(chosen.indices) == budget:
            break
        key = keys[index] if keys is not None else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        chosen.indices.append(int(index))
        chosen.scores.append(float(values[index]))
    return chosen


def _round_robin(scores: np.ndarray, budget: int, keys: list[str] | None) -> Selection:
    """Targets 0..T-1 in turn take their best candidate not yet chosen (nor a duplicate of one)."""
    orders = np.argsort(-scores, axis=1, kind="stable")
    cursors = [0] * scores.shape[0]
    chosen, taken, seen = Selection([], []), set(), set()

    def usable(index: int) -> bool:
        return index not in taken and (keys is None or keys[index] not in seen)

    while len(chosen.indices) < budget:
        progressed = False
        for target in range(scores.shape[0]):
            if len(chosen.indices) == budget:
                break
            order = orders[target]
            while cursors[target] < len(order) and not usable(int(order[cursors[target]])):
                cursors[target] += 1
            if cursors[target] == len(order):
                continue
            index = int(order[cursors[target]])
            taken.add(index)
            if keys is not None:
                seen.add(keys[index])
            chosen.indices.append(index)
            chosen.scores.append(float(scores[target, index]))
            chosen.targets.append(target)
            progressed = True
        if not progressed:
            break
    return chosen


def check_pool(run_dir: Path, info: dict[str, Any], pool: Path) -> None:
    """Refuse a pool file that is not the run's training set (by content sha256)."""
    wanted = info.get("digests", {}).get("train")
    if wanted is None:
        raise StrideError(f"{run_dir}/info.json records no training-set digest (not a run of stride attribute)")
    if not pool.exists():
        raise StrideError(f"pool file not found: {pool}")
    if content_digest(pool) != wanted:
        recorded = info.get("inputs", {}).get("train", "?")
        raise StrideError(f"--pool {pool} is not the training set of {run_dir} (that was {recorded}, sha256 differs)")


def normalised_text(row: dict[str, Any]) -> str:
    """An example's text (prompt + completion) with runs of whitespace made one space."""
    text = row["text"] if "text" in row else row["prompt"] + row["completion"]
    return " ".join(text.split())


def pool_lines(pool: Path) -> tuple[list[bytes], list[str]]:
    """Per example its line as stored (JSONL: the raw bytes; a datasets folder: the row as JSON)
    and its normalised text."""
    if pool.is_dir():
        rows = list(read_examples(pool))
        return [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in rows], [normalised_text(r) for r in rows]
    lines = [line for line in pool.read_bytes().splitlines(keepends=True) if line.strip()]
    lines = [line if line.endswith(b"\n") else line + b"\n" for line in lines]
    return lines, [normalised_text(json.loads(line)) for line in lines]


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file through `NAME.partial` and one rename, so no half file is ever left."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


def select(
    pool: str | Path,
    out_dir: str | Path,
    budget: str | int | float,
    aggregate: str = "mean",
    run_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    target: str | Path | None = None,
    dedup: bool = False,
    method: str = "stride",
    config: StrideConfig | None = None,
    method_settings: dict[str, Any] | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> Selection:
    """Select training data for a target and write `selected.jsonl` and `manifest.json` in `out_dir`.

    Either `run_dir` (a finished `stride attribute` run whose training set is `pool`) or
    `model_dir` + `target` (the run is made first, in `out_dir`). `budget`: a number of examples
    or a fraction of the pool; `aggregate`: mean, max or round-robin over the target examples;
    `dedup`: skip candidates whose whitespace-normalised text was already chosen."""
    pool, out = Path(pool), Path(out_dir)
    if aggregate not in AGGREGATES:
        raise StrideError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    _check_sources(run_dir, model_dir, target)
    run = out if model_dir is not None else Path(str(run_dir))
    if model_dir is None:
        from stride.api import read_run

        info, scores = read_run(run)
        check_pool(run, info, pool)
    else:
        read_examples(pool)  # a bad pool file is named before the model is loaded
    lines, texts = pool_lines(pool)
    n_budget = parse_budget(budget, len(lines))
    if model_dir is not None:
        from stride.api import attribute

        result = attribute(model_dir, pool, str(target), out, method=method, config=config, seed=seed,
                           threads=threads, progress=progress, method_settings=method_settings)  # fmt: skip
        assert result.scores is not None  # a dense run: no top_k
        info, scores = result.info, result.scores.double().numpy()
    if scores.shape[1] != len(lines):
        raise StrideError(f"{run}: the scores cover {scores.shape[1]} training examples but {pool} holds {len(lines)}")
    chosen = aggregate_select(scores, aggregate, n_budget, texts if dedup else None)
    if len(chosen.indices) < n_budget:
        warnings.warn(f"only {len(chosen.indices)} distinct examples in the pool; selected them all, fewer than "
                      f"the budget {n_budget}", stacklevel=2)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "selected.jsonl", b"".join(lines[i] for i in chosen.indices))
    write_json(out / "manifest.json", _manifest(run, info, scores, pool, budget, n_budget, aggregate, dedup, chosen))
    return chosen


def _check_sources(run_dir: str | Path | None, model_dir: str | Path | None, target: str | Path | None) -> None:
    """Scores come from a finished run, or from a model and target examples: one of the two."""
    if run_dir is not None and model_dir is not None:
        raise StrideError("--run and --model are mutually exclusive: select from a finished run, or make one")
    if run_dir is None and model_dir is None:
        raise StrideError("give a run folder (--run) or a model and target examples (--model, --queries)")
    if run_dir is not None and target is not None:
        raise StrideError("--queries goes with --model; a run's target examples are its own queries")
    if model_dir is not None and target is None:
        raise StrideError("--model needs the target examples (--queries)")


def _manifest(
    run: Path, info: dict[str, Any], scores: np.ndarray, pool: Path, budget: Any, n_budget: int, aggregate: str,
    dedup: bool, chosen: Selection,
) -> dict[str, Any]:  # fmt: skip
    picked = np.asarray(chosen.indices, dtype=np.int64)
    per_candidate = {"mean_over_targets": scores.mean(axis=0), "max_over_targets": scores.max(axis=0)}
    return {
        "settings": {
            "pool": str(pool.resolve()),
            "budget": budget,
            "budget_examples": n_budget,
            "aggregate": aggregate,
            "dedup": dedup,
        },
        "selected": {
            "indices": chosen.indices,
            "scores": chosen.scores,
            **({"targets": chosen.targets} if aggregate == "round-robin" else {}),
        },
        "score_summary": {
            name: {"selected": _summary(values[picked]), "pool": _summary(values)}
            for name, values in per_candidate.items()
        },
        "provenance": {
            "run": str(run.resolve()),
            "method": info.get("method"),
            "inputs": info.get("inputs", {}),
            "digests": info.get("digests", {}),
            "n_target": scores.shape[0],
            "n_pool": scores.shape[1],
            "stride_version": __version__,
        },
    }
