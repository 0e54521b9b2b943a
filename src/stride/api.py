"""Public entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stride import __version__
from stride.attributor import MethodContext
from stride.config import StrideConfig
from stride.core.arrays import save_arrays
from stride.core.device import method_placement
from stride.core.digest import content_digest
from stride.core.jsonio import write_json
from stride.core.topk import TopScores
from stride.data import TokenizedData, load_data, write_jsonl
from stride.distributed import Shard, check_parts, current_shard, process_group, shard_device, together
from stride.errors import StrideError
from stride.models import context_length, load_causal_lm, model_digest, parameter_count, resolve_model_dir
from stride.registry import available_methods, create_attributor
from stride.store import RunStore

TOP_K = 10


@dataclass
class AttributionResult:
    """Scores [n_queries, n_train] (positive = lowers the query's loss) and where they were written;
    with `top_k`, `scores` is None and `top` holds each query's top and bottom k (and sparse scores)."""

    scores: torch.Tensor | None
    out_dir: Path
    info: dict[str, Any]
    top: TopScores | None = None


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
    method_settings: dict[str, Any] | None = None,
    reuse_from: str | Path | None = None,
    top_k: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> AttributionResult:
    """Score every training example for every query and write the run folder.

    Writes `scores.safetensors` (tensor `scores`, float32 [n_queries, n_train]), `info.json`
    (settings, versions, sizes, timings) and `top.jsonl` (per query its 10 most and 10 least
    influential training examples). Finished stages in `out_dir` are reused. `config` holds
    STRIDE's settings, `method_settings` those of another `method` (for STRIDE: those of its
    `config.partner`). `reuse_from`: a run folder of
    the same model, training set and settings whose query-independent stages (STRIDE's trained
    operators, a baseline's training-side features) are copied in first, so new queries cost
    only their own stages. `top_k`: write each query's k most and k least influential examples
    (`top_scores.safetensors`) and, for STRIDE, its sparse scores (`scores_sparse.safetensors`)
    instead of the dense `scores.safetensors` (README: "Top-k output"). `device` ("auto", "cpu",
    "cuda", "cuda:N") and `dtype` ("float32", "bfloat16", "float16") place the frozen model; STRIDE's
    operators and recovery stay float32, and the other methods run on the CPU in float32.
    """
    started = time.perf_counter()
    config = config or StrideConfig()
    config.validate()
    check_top_k(top_k)
    if method not in available_methods():
        raise StrideError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    shard = current_shard()  # this process's share of a torchrun job (None: one process)
    place, precision = method_placement(method, device, dtype, config.partner)
    if shard is not None:
        place = shard_device(shard, place)
    n_threads = set_threads(threads)
    check_seed(seed)
    torch.manual_seed(seed)
    model_dir = resolve_model_dir(model_dir)  # a Hub id: its snapshot in the local cache
    model, tokenizer = load_causal_lm(model_dir, trust_remote_code=trust_remote_code, dtype=precision)
    model.to(place)
    max_length = resolve_max_length(config.max_length, model, tokenizer)
    train = load_data(train_path, tokenizer, max_length, name="training set")
    queries = load_data(queries_path, tokenizer, max_length, name="queries")
    train.device = queries.device = place
    config.validate(len(train))
    digests = input_digests(model_dir, train_path, queries_path)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(_run_store(out_dir, shard))
        context = MethodContext(model, tokenizer, seed, store, digests["model"], progress and shard is None, config,
                                dict(method_settings or {}))  # fmt: skip
        attributor = create_attributor(method, context)  # validates the method's settings
        if shard is not None:
            parts = attributor.n_parts(train, queries)
            check_parts(shard, parts, f"method {method}: {attributor.parts_description(train, queries)}")
            stack.enter_context(process_group(shard, place))

        def claim() -> None:
            if shard is None or shard.leader:
                store.claim({"method": method, "model": digests["model"], "train": digests["train"]}, overwrite)
                if reuse_from is not None:
                    store.adopt_training_stages(reuse_from)

        together(shard, claim, place)
        if shard is not None:
            for phase in attributor.shard_phases(train, queries, shard):
                together(shard, phase, place)
            if not shard.leader:
                return AttributionResult(None, Path(out_dir), {"rank": shard.rank, "world_size": shard.world})
        attributor.prepare(train)
        output = attributor.score(queries) if top_k is None else attributor.score_top(queries, top_k)
        finite = output.all_finite() if isinstance(output, TopScores) else bool(torch.isfinite(output).all())
        if not finite:
            raise StrideError("the scores contain NaN or inf; the stage files are kept in the output folder")
        info = {
            "method": method,
            "settings": attributor.settings(),
            "seed": seed,
            "threads": n_threads,
            "processes": 1 if shard is None else shard.world,
            "device": str(place),
            "dtype": str(precision).removeprefix("torch."),
            "inputs": {  # absolute paths: `stride report` reopens them
                "model": str(Path(model_dir).resolve()),
                "train": str(Path(train_path).resolve()),
                "queries": str(Path(queries_path).resolve()),
            },
            "digests": digests,
            "n_train": len(train),
            "n_queries": len(queries),
            "max_length": max_length,
            "truncated": {"train": train.n_truncated, "queries": queries.n_truncated},
            "model_parameters": parameter_count(model),
            "timings_seconds": {**attributor.timings, "total": time.perf_counter() - started},
            "stages": attributor.stage_info,
            "versions": versions(),
        }
        if isinstance(output, TopScores):
            info["top_k"] = int(output.top_indices.shape[1])
            write_top_outputs(Path(out_dir), output, info, train, queries)
        else:
            write_outputs(Path(out_dir), output, info, train, queries, getattr(attributor, "scores_se_", None))
        store.finish()
    if isinstance(output, TopScores):
        return AttributionResult(None, Path(out_dir), info, output)
    return AttributionResult(output, Path(out_dir), info)


def _run_store(out_dir: str | Path, shard: Shard | None) -> contextlib.AbstractContextManager[RunStore]:
    """The run folder, locked by this process, or by rank 0 when this process is another rank of a job."""
    if shard is None or shard.leader:
        return RunStore(out_dir).locked()
    return contextlib.nullcontext(RunStore(out_dir))


def check_top_k(top_k: int | None) -> None:
    """`top_k` is None or a positive integer."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise StrideError(f"top_k must be a positive integer, got {top_k!r}")


def check_seed(seed: int) -> None:
    """Seeds feed numpy's and torch's generators, which take 0 to 2**32 - 1 (numpy) or 2**63 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise StrideError(f"seed must be an integer from 0 to {2**32 - 1}, got {seed!r}")


def input_digests(model_dir: str | Path, train_path: str | Path, queries_path: str | Path) -> dict[str, str]:
    """sha256 of the model folder and of the contents of the training and query data: recorded with
    the scores, so ground truth made on other data is recognised."""
    return {
        "model": model_digest(model_dir),
        "train": content_digest(train_path),
        "queries": content_digest(queries_path),
    }


def versions() -> dict[str, str]:
    """Versions of stride and the libraries that shape its numbers."""
    import sklearn
    import transformers

    return {
        "stride": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }  # fmt: skip


def top_examples(
    scores: torch.Tensor,
    train: TokenizedData,
    queries: TokenizedData,
    k: int = TOP_K,
    standard_errors: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per query: its text and the k most and k least influential training examples (with each
    score's standard error when given)."""
    k = min(k, scores.shape[1])
    rows = []

    def entries(query: int, indices: torch.Tensor) -> list[dict[str, Any]]:
        listed = []
        for i in indices:
            entry = {"index": int(i), "score": float(scores[query, i]), "text": train.display_text(int(i))}
            if standard_errors is not None:
                entry["se"] = float(standard_errors[query, i])
            listed.append(entry)
        return listed

    for query in range(scores.shape[0]):
        order = torch.argsort(scores[query], descending=True, stable=True)

        rows.append({
            "query_index": query, "query": queries.display_text(query),
            "top": entries(query, order[:k]), "bottom": entries(query, order.flip(0)[:k]),
        })  # fmt: skip
    return rows


def write_outputs(
    out_dir: Path,
    scores: torch.Tensor,
    info: dict[str, Any],
    train: TokenizedData,
    queries: TokenizedData,
    standard_errors: torch.Tensor | None = None,
) -> None:
    """scores.safetensors (with `scores_se` when there are standard errors), info.json and top.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {f"{name}_sha256": value for name, value in info.get("digests", {}).items()}
    arrays = {"scores": scores.float()} if standard_errors is None else {"scores": scores.float(),
                                                                          "scores_se": standard_errors}  # fmt: skip
    save_arrays(arrays, out_dir / "scores.safetensors", digests)
    write_json(out_dir / "info.json", info)
    write_jsonl(top_examples(scores, train, queries, standard_errors=standard_errors), out_dir / "top.jsonl")


def top_rows(top: TopScores, train: TokenizedData, queries: TokenizedData, k: int = TOP_K) -> list[dict[str, Any]]:
    """`top_examples` from top-k arrays: per query the first min(k, top-k) of each list."""
    k = min(k, top.top_indices.shape[1])

    def entries(indices: torch.Tensor, scores: torch.Tensor) -> list[dict[str, Any]]:
        return [{"index": int(i), "score": float(s), "text": train.display_text(int(i))}
                for i, s in zip(indices[:k], scores[:k])]  # fmt: skip

    return [{"query_index": query, "query": queries.display_text(query),
             "top": entries(top.top_indices[query], top.top_scores[query]),
             "bottom": entries(top.bottom_indices[query], top.bottom_scores[query])}
            for query in range(len(top.top_indices))]  # fmt: skip


def write_top_outputs(
    out_dir: Path, top: TopScores, info: dict[str, Any], train: TokenizedData, queries: TokenizedData
) -> None:
    """top_scores.safetensors, scores_sparse.safetensors (when the method has sparse scores),
    info.json and top.jsonl in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {f"{name}_sha256": value for name, value in info.get("digests", {}).items()}
    save_arrays(top.tensors(), out_dir / "top_scores.safetensors", digests)
    if top.sparse is not None:
        save_arrays(top.sparse.tensors(), out_dir / "scores_sparse.safetensors", digests)
    write_json(out_dir / "info.json", info)
    write_jsonl(top_rows(top, train, queries), out_dir / "top.jsonl")


def load_scores(path: str | Path) -> np.ndarray:
    """A score matrix from `scores.safetensors` (tensor `scores`) or a `.npy` file."""
    return read_scores(path)[0]


def read_scores(path: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """A score matrix (float [n_queries, n_train]) and the input digests recorded beside it
    (`model`, `train`, `queries`; none for a `.npy` file)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "scores.safetensors"
    if not path.is_file():
        raise StrideError(f"score file not found: {path}")
    digests: dict[str, str] = {}
    if path.suffix == ".npy":
        try:
            scores = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise StrideError(f"{path} is not a plain numeric .npy array ({exc})") from None
    else:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                if "scores" not in handle.keys():  # noqa: SIM118 (safe_open handles have keys(), not __contains__)
                    raise StrideError(f"{path} holds no tensor named 'scores' (found {sorted(handle.keys())})")
                scores = handle.get_tensor("scores")
                metadata = handle.metadata() or {}
        except SafetensorError as exc:
            raise StrideError(f"{path} is not a readable safetensors file ({exc}); pass a scores.safetensors "
                              "written by stride attribute, or a .npy array") from None  # fmt: skip
        digests = {key.removesuffix("_sha256"): value for key, value in metadata.items() if key.endswith("_sha256")}
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_:
        raise StrideError(f"{path} must hold a numeric [n_queries, n_train] matrix, got {scores.dtype} {scores.shape}")
    return scores, digests


def read_info(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "info.json").read_text())


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """A finished run's info.json and scores [n_queries, n_train], checked against each other."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StrideError(f"run folder not found: {run_dir}")
    for name in ("scores.safetensors", "info.json"):
        if not (run_dir / name).is_file():
            raise StrideError(f"{run_dir} holds no {name}: not a finished run of stride attribute")
    try:
        info = json.loads((run_dir / "info.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StrideError(f"{run_dir}/info.json is not valid JSON ({exc})") from None
    scores, digests = read_scores(run_dir / "scores.safetensors")
    recorded = info.get("digests", {})
    if any(recorded.get(name, value) != value for name, value in digests.items()):
        raise StrideError(f"{run_dir}: scores.safetensors and info.json come from different runs")
    if not np.isfinite(scores).all():
        raise StrideError(f"{run_dir}/scores.safetensors holds NaN or inf scores")
    return info, scores.astype(np.float64)


def groundtruth(
    model_dir: str | Path, train_path: str | Path, queries_path: str | Path, out_dir: str | Path,
    regime: str = "finetune", base_dir: str | Path | None = None, protocol: str = "keep", fraction: float = 0.5,
    n_subsets: int = 64, n_seeds: int = 2, recipe: dict[str, Any] | None = None, seed: int = 0,
    workers: int = 2, threads_per_worker: int = 1, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Retrain on random subsets and record every query's loss (see stride.evaluation.groundtruth)."""
    from stride.evaluation.groundtruth import GroundTruthSpec, run_groundtruth
    from stride.lm_training import LMRecipe

    check_seed(seed)
    if recipe is None and (Path(model_dir) / "recipe.json").is_file():
        recipe = json.loads((Path(model_dir) / "recipe.json").read_text())["recipe"]
    recipe_values = dataclasses.asdict(LMRecipe.from_dict(recipe or {}))
    spec = GroundTruthSpec(
        model=str(model_dir), train=str(train_path), queries=str(queries_path), regime=regime,
        base=str(base_dir) if base_dir else None, protocol=protocol, fraction=fraction, n_subsets=n_subsets,
        n_seeds=n_seeds, seed=seed, recipe=recipe_values,
    )  # fmt: skip
    return run_groundtruth(spec, out_dir, workers=workers, threads_per_worker=threads_per_worker, progress=progress)


def lds(scores_path: str | Path, groundtruth_dir: str | Path, out_path: str | Path | None = None,
        plot_path: str | Path | None = None, seed: int = 0) -> Any:  # fmt: skip
    """LDS of a score matrix against a ground-truth folder, with a bootstrap CI and the seed ceiling."""
    from stride.evaluation.groundtruth import groundtruth_digests, load_groundtruth
    from stride.evaluation.lds import evaluate_lds

    scores, score_digests = read_scores(scores_path)
    subsets, losses = load_groundtruth(groundtruth_dir)
    check_same_inputs(score_digests, groundtruth_digests(groundtruth_dir), scores_path, groundtruth_dir)
    try:
        report = evaluate_lds(scores, subsets, losses, seed=seed)
    except ValueError as exc:
        raise StrideError(f"cannot compare {scores_path} with {groundtruth_dir}: {exc}") from exc
    if report.n_constant_predictions:
        warnings.warn(
            f"{report.n_constant_predictions} of {report.n_queries} queries have the same predicted output on "
            "every subset (e.g. all their scores are equal); each counts as LDS 0",
            stacklevel=2,
        )
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out_path), report.to_dict())
    if plot_path is not None:
        from stride.evaluation.plots import plot_lds

        plot_lds(report, scores, subsets, losses, plot_path)
    return report


def check_same_inputs(scores: dict[str, str], truth: dict[str, str], scores_path: Any, truth_path: Any) -> None:
    """Refuse scores computed on another model, training set or query set than the ground truth; warn
    when either side records no digests (a .npy file, ground truth from an earlier version)."""
    if not scores or not truth:
        side = scores_path if not scores else truth_path
        warnings.warn(f"{side} records no input digests, so nothing checks that the scores and the ground "
                      "truth were made on the same model and data", stacklevel=3)  # fmt: skip
        return
    differing = [name for name in ("model", "train", "queries") if name in scores and name in truth
                 and scores[name] != truth[name]]  # fmt: skip
    if differing:
        labels = {"model": "model", "train": "training set", "queries": "query set"}
        raise StrideError(
            f"the scores in {scores_path} were computed on another {' and '.join(labels[d] for d in differing)} "
            f"than the ground truth in {truth_path}; compare scores and ground truth made on the same data"
        )


def counterfactual(
    model_dir: str | Path, train_path: str | Path, queries_path: str | Path, scores_path: str | Path,
    out_dir: str | Path, regime: str = "finetune", base_dir: str | Path | None = None,
    ks: tuple[int, ...] | list[int] = (10, 20, 50), n_seeds: int = 2, queries_subset: int | list[int] | None = None,
    recipe: dict[str, Any] | None = None, seed: int = 0, workers: int = 2, threads_per_worker: int = 1,
    progress: bool = True, plot_path: str | Path | None = None,
) -> Any:  # fmt: skip
    """Remove each query's top-k attributed (and k random) training examples, retrain, compare the
    query's loss with the full-data retrain (see stride.evaluation.counterfactual); writes
    `report.json` in `out_dir` and returns the report. `queries_subset`: a number of queries drawn
    at random with `seed`, or query indices (default: all queries)."""
    from stride.data import read_examples
    from stride.evaluation.counterfactual import (
        CounterfactualSpec,
        plot_counterfactual,
        run_counterfactual,
        select_queries,
    )
    from stride.lm_training import LMRecipe

    check_seed(seed)
    if recipe is None and (Path(model_dir) / "recipe.json").is_file():
        recipe = json.loads((Path(model_dir) / "recipe.json").read_text())["recipe"]
    recipe_values = dataclasses.asdict(LMRecipe.from_dict(recipe or {}))
    scores = load_scores(scores_path)
    spec = CounterfactualSpec(
        model=str(model_dir), train=str(train_path), queries=str(queries_path), scores=str(scores_path),
        query_indices=select_queries(len(read_examples(queries_path)), queries_subset, seed), ks=list(ks),
        regime=regime, base=str(base_dir) if base_dir else None, n_seeds=n_seeds, seed=seed, recipe=recipe_values,
    )  # fmt: skip
    report = run_counterfactual(spec, scores, out_dir, workers=workers, threads_per_worker=threads_per_worker,
                                progress=progress)  # fmt: skip
    if plot_path is not None:
        plot_counterfactual(report, plot_path)
    return report
