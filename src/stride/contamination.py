"""`stride contamination`: which benchmark items leaked into the training set, from attribution.

The benchmark items are attributed as queries (the run folder is the output folder, so a rerun
reuses its stages). Each score is standardised against its benchmark item's own scores over the
training set, robustly: z[i, j] = (s[i, j] - median_i) / scale_i, with scale_i = 1.4826 * MAD_i
(the median absolute deviation; where more than half the scores are equal, so the MAD is 0, the
mean absolute deviation times 1.2533; a constant row gets z = 0). An item's `leak_score` is its
largest z: one training example that stands far out from the rest marks a likely copy. A training
example's `contamination_score` is its largest z over the benchmark items.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.data import read_examples
from stride.errors import StrideError
from stride.selection import normalised_text, write_atomic

MAD_CONSISTENCY = 1.4826  # MAD -> standard deviation for normal data
MEAN_AD_CONSISTENCY = 1.2533  # mean absolute deviation -> standard deviation for normal data
REPORT_ITEMS = 20
TEXT_CHARS = 300


@dataclass
class ContaminationResult:
    """Per benchmark item its leak score and top training examples, per training example its
    contamination score, and AUROC/AUPRC when labels were given."""

    leak_scores: np.ndarray
    train_scores: np.ndarray
    top: list[list[tuple[int, float]]]
    metrics: dict[str, Any] | None
    out_dir: Path


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Each row standardised by its median and a robust scale (see the module docstring)."""
    median = np.median(scores, axis=1, keepdims=True)
    deviation = np.abs(scores - median)
    scale = MAD_CONSISTENCY * np.median(deviation, axis=1, keepdims=True)
    fallback = MEAN_AD_CONSISTENCY * deviation.mean(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, fallback)
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, (scores - median) / safe, 0.0)


def read_labels(path: str | Path, n_items: int) -> np.ndarray:
    """0/1 per benchmark item: a JSON list, or JSON lines each holding {"leaked": bool}."""
    path = Path(path)
    if not path.is_file():
        raise StrideError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        values: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            values = [json.loads(line)["leaked"] for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise StrideError(f'{path}: labels must be a JSON list of 0/1 or JSON lines with "leaked"') from None
    if isinstance(values, dict) and "leaked" in values:
        values = [values["leaked"]]
    if not isinstance(values, list) or not all(v in (0, 1) for v in values):
        raise StrideError(f"{path}: labels must be 0/1 (or true/false), one per benchmark item")
    if len(values) != n_items:
        raise StrideError(f"{path} holds {len(values)} labels but the benchmark has {n_items} items")
    return np.asarray(values, dtype=np.int64)


def detection_metrics(leak_scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUROC, AUPRC (average precision) and recall among the top n_leaked items."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n_leaked = int(labels.sum())
    metrics: dict[str, Any] = {"n_items": len(labels), "n_leaked": n_leaked, "auroc": None, "auprc": None,
                               "recall_at_n_leaked": None}  # fmt: skip
    if n_leaked in (0, len(labels)):
        warnings.warn("the labels hold one class only, so AUROC and AUPRC are undefined", stacklevel=3)
        return metrics
    top = np.argsort(-leak_scores, kind="stable")[:n_leaked]
    metrics.update(auroc=float(roc_auc_score(labels, leak_scores)),
                   auprc=float(average_precision_score(labels, leak_scores)),
                   recall_at_n_leaked=float(labels[top].sum() / n_leaked))  # fmt: skip
    return metrics


def contamination(
    model_dir: str | Path,
    train_path: str | Path,
    benchmark_path: str | Path,
    out_dir: str | Path,
    method: str = "stride",
    config: StrideConfig | None = None,
    method_settings: dict[str, Any] | None = None,
    labels: str | Path | None = None,
    top_k: int = 10,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> ContaminationResult:
    """Attribute the benchmark items (as queries) to the training set in `out_dir` and write
    `benchmark_scores.jsonl`, `train_scores.jsonl` and `report.md` there (with `labels`: AUROC,
    AUPRC and `leak_scores.png`, the leak scores of leaked and clean items)."""
    from stride.api import attribute

    if top_k < 1:
        raise StrideError(f"top-k must be at least 1, got {top_k}")
    benchmark = read_examples(benchmark_path)  # a file of no usable format is named before the model loads
    truth = read_labels(labels, len(benchmark)) if labels is not None else None
    out = Path(out_dir)
    result = attribute(model_dir, train_path, benchmark_path, out, method=method, config=config, seed=seed,
                       threads=threads, progress=progress, method_settings=method_settings)  # fmt: skip
    assert result.scores is not None  # a dense run: no top_k
    scores = result.scores.double().numpy()
    z = robust_z(scores)
    leak, train_scores = z.max(axis=1), z.max(axis=0)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    top = [[(int(j), float(scores[i, j])) for j in order[i]] for i in range(len(scores))]
    _write_jsonl(out / "benchmark_scores.jsonl", [
        {"index": i, "leak_score": float(leak[i]), "top": [{"train_index": j, "score": s} for j, s in top[i]]}
        for i in range(len(leak))
    ])  # fmt: skip
    _write_jsonl(out / "train_scores.jsonl",
                 [{"index": j, "contamination_score": float(v)} for j, v in enumerate(train_scores)])  # fmt: skip
    metrics = None
    if truth is not None:
        metrics = detection_metrics(leak, truth)
        write_json(out / "metrics.json", metrics)
        _plot(leak, truth, out / "leak_scores.png")
    train = read_examples(train_path)
    report = _report(leak, top, benchmark, train, metrics, method)
    write_atomic(out / "report.md", report.encode("utf-8"))
    return ContaminationResult(leak, train_scores, top, metrics, out)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def _plot(leak: np.ndarray, truth: np.ndarray, path: Path) -> None:
    """Histograms of the leak scores of leaked and clean items (skipped without matplotlib)."""
    if importlib.util.find_spec("matplotlib") is None:
        warnings.warn("matplotlib is not installed, so no plot is drawn (pip install 'stride-tda[plots]')",
                      stacklevel=3)  # fmt: skip
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(float(leak.min()), float(leak.max()) + 1e-9, 30).tolist()
    for value, name in ((0, "not leaked"), (1, "leaked")):
        axes.hist(leak[truth == value], bins=bins, alpha=0.6, label=f"{name} ({int((truth == value).sum())})")
    axes.set_xlabel("leak score (robust z of the item's largest attribution score)")
    axes.set_ylabel("benchmark items")
    axes.legend()
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, dpi=120)
    plt.close(figure)
    partial.replace(path)


def _quote(text: str) -> str:
    """One line of at most TEXT_CHARS characters, Markdown-inert (code span)."""
    line = " ".join(text.split())
    line = line if len(line) <= TEXT_CHARS else line[: TEXT_CHARS - 1] + "…"
    return "`` " + line.replace("`", "'") + " ``"


def _report(leak: np.ndarray, top: list[list[tuple[int, float]]], benchmark: Any, train: Any,
            metrics: dict[str, Any] | None, method: str) -> str:  # fmt: skip
    lines = [
        "# stride contamination", "",
        f"{len(leak)} benchmark items against {len(train)} training examples, attributed with `{method}`. "
        "leak score: the item's largest attribution score as a robust z-score against its own scores over the "
        "training set (median, 1.4826 x MAD); higher means more likely leaked.", "",
    ]  # fmt: skip
    if metrics is not None:
        lines += ["## Against the labels", ""]
        lines += [f"- {name}: {value if value is None or isinstance(value, int) else f'{value:.4f}'}"
                  for name, value in metrics.items()]  # fmt: skip
        lines += ["", "![leak scores](leak_scores.png)", ""]
    shown = np.argsort(-leak, kind="stable")[:REPORT_ITEMS]
    lines += [f"## The {len(shown)} most suspicious benchmark items", ""]
    for rank, i in enumerate(shown, start=1):
        j, score = top[int(i)][0]
        lines += [
            f"{rank}. item {int(i)}, leak score {leak[i]:.2f}: {_quote(normalised_text(benchmark[int(i)]))}",
            f"   - top training example {j} (score {score:.4g}): {_quote(normalised_text(train[j]))}",
        ]
    return "\n".join(lines) + "\n"
