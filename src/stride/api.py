"""Public entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from stride import __version__
from stride.attributor import Attributor
from stride.config import StrideConfig
from stride.data import TokenizedData, load_data, write_jsonl
from stride.errors import StrideError
from stride.method.attributor import StrideAttributor
from stride.models import context_length, load_causal_lm, parameter_count
from stride.store import RunStore, file_digest, write_json

METHODS = ("stride",)
TOP_K = 10


@dataclass
class AttributionResult:
    """Scores [n_queries, n_train] (positive = lowers the query's loss) and where they were written."""

    scores: torch.Tensor
    out_dir: Path
    info: dict[str, Any]


def set_threads(threads: int | None) -> int:
    """Fix torch's CPU thread count (results differ by about 1e-5 between thread counts)."""
    if threads is not None:
        if threads < 1:
            raise StrideError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_max_length(requested: int | None, model: torch.nn.Module, tokenizer: Any) -> int:
    """The token limit per example: the model's context unless a shorter one is requested."""
    limit = context_length(model, tokenizer)
    if requested is None:
        return limit
    if not 2 <= requested <= limit:
        raise StrideError(f"max_length must be between 2 and the model's context length {limit}, got {requested}")
    return requested


def make_attributor(method: str, model: torch.nn.Module, config: StrideConfig, seed: int,
                    store: RunStore | None, model_digest: str, progress: bool) -> Attributor:
    """The attributor registered under `method`."""
    if method == "stride":
        return StrideAttributor(model, config, seed=seed, store=store, model_digest=model_digest, progress=progress)
    raise StrideError(f"unknown method {method!r}; available: {', '.join(METHODS)}")


def attribute(
    model_dir: str | Path,
    train_path: str | Path,
    queries_path: str | Path,
    out_dir: str | Path,
    method: str = "stride",
    config: StrideConfig | None = None,
    seed: int = 0,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> AttributionResult:
    """Score every training example for every query and write the run folder.

    Writes `scores.safetensors` (tensor `scores`, float32 [n_queries, n_train]), `info.json`
    (settings, versions, sizes, timings) and `top.jsonl` (per query its 10 most and 10 least
    influential training examples). Finished stages in `out_dir` are reused.
    """
    started = time.perf_counter()
    config = config or StrideConfig()
    config.validate()
    if method not in METHODS:
        raise StrideError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    n_threads = set_threads(threads)
    torch.manual_seed(seed)
    model, tokenizer = load_causal_lm(model_dir, trust_remote_code=trust_remote_code)
    max_length = resolve_max_length(config.max_length, model, tokenizer)
    train = load_data(train_path, tokenizer, max_length, name="training set")
    queries = load_data(queries_path, tokenizer, max_length, name="queries")
    config.validate(len(train))
    store = RunStore(out_dir, overwrite=overwrite)
    attributor = make_attributor(method, model, config, seed, store, file_digest(model_dir), progress)
    attributor.prepare(train)
    scores = attributor.score(queries)
    if not torch.isfinite(scores).all():
        raise StrideError("the scores contain NaN or inf; the stage files are kept in the output folder")
    info = {
        "method": method,
        "settings": attributor.settings(),
        "seed": seed,
        "threads": n_threads,
        "inputs": {"model": str(model_dir), "train": str(train_path), "queries": str(queries_path)},
        "n_train": len(train),
        "n_queries": len(queries),
        "max_length": max_length,
        "truncated": {"train": train.n_truncated, "queries": queries.n_truncated},
        "model_parameters": parameter_count(model),
        "timings_seconds": {**attributor.timings, "total": time.perf_counter() - started},
        "stages": getattr(attributor, "stage_info", {}),
        "versions": versions(),
    }
    write_outputs(Path(out_dir), scores, info, train, queries)
    return AttributionResult(scores, Path(out_dir), info)


def versions() -> dict[str, str]:
    """Versions of stride and the libraries that shape its numbers."""
    import sklearn
    import transformers

    return {
        "stride": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }  # fmt: skip


def top_examples(scores: torch.Tensor, train: TokenizedData, queries: TokenizedData, k: int = TOP_K) -> list[dict[str, Any]]:
    """Per query: its text and the k most and k least influential training examples."""
    k = min(k, scores.shape[1])
    rows = []
    for query in range(scores.shape[0]):
        order = torch.argsort(scores[query], descending=True, stable=True)

        def entries(indices: torch.Tensor) -> list[dict[str, Any]]:
            return [
                {"index": int(i), "score": float(scores[query, i]), "text": train.display_text(int(i))}
                for i in indices
            ]

        rows.append({
            "query_index": query, "query": queries.display_text(query),
            "top": entries(order[:k]), "bottom": entries(order.flip(0)[:k]),
        })  # fmt: skip
    return rows


def write_outputs(out_dir: Path, scores: torch.Tensor, info: dict[str, Any], train: TokenizedData,
                  queries: TokenizedData) -> None:
    """scores.safetensors, info.json and top.jsonl in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"scores": scores.float().contiguous()}, str(out_dir / "scores.safetensors"))
    write_json(out_dir / "info.json", info)
    write_jsonl(top_examples(scores, train, queries), out_dir / "top.jsonl")


def load_scores(path: str | Path) -> np.ndarray:
    """A score matrix from `scores.safetensors` (tensor `scores`) or a `.npy` file."""
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "scores.safetensors"
    if not path.is_file():
        raise StrideError(f"score file not found: {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    arrays = load_file(str(path))
    if "scores" not in arrays:
        raise StrideError(f"{path} holds no tensor named 'scores' (found {sorted(arrays)})")
    return arrays["scores"]


def read_info(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "info.json").read_text())
