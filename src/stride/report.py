"""`stride report`: one self-contained HTML page of a run folder written by `stride attribute`.

Per query: its text, the model's greedy continuation of its first half (of its prompt, for
prompt/completion queries), and its k most and k least influential training examples with
their scores and the training file's other fields; with a ground-truth folder, the LDS summary
and plot. Nothing is recomputed but the continuations (and the LDS, which is cheap).
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from stride.core.digest import content_digest
from stride.data import read_examples
from stride.errors import StrideError
from stride.models import model_digest
from stride.report_page import ExampleView, LDSView, QueryView, ReportData, render_page

TEXT_FIELDS = ("text", "prompt", "completion")
FIELD_CHARS = 120  # longest field value shown (and filtered on)
CONTINUATION_TOKENS = 24


def write_report(
    run_dir: str | Path,
    out_path: str | Path | None = None,
    groundtruth: str | Path | None = None,
    k: int = 10,
    continuation_tokens: int = CONTINUATION_TOKENS,
    threads: int | None = None,
) -> Path:
    """Write the run's HTML report (default `run_dir/report.html`) and return its path.

    `groundtruth`: a folder written by `stride groundtruth` (adds the LDS); `continuation_tokens`:
    greedy tokens the run's model adds to each query's first half (0: none)."""
    from stride.api import read_run, set_threads

    if k < 1:
        raise StrideError(f"k must be at least 1, got {k}")
    if continuation_tokens < 0:
        raise StrideError(f"continuation tokens must be 0 or more, got {continuation_tokens}")
    set_threads(threads)
    run_dir = Path(run_dir)
    info, scores = read_run(run_dir)
    train = read_examples(_recorded_path(run_dir, info, "train"))
    queries = read_examples(_recorded_path(run_dir, info, "queries"))
    _check_sizes(run_dir, scores, len(train), len(queries))
    lds = _lds_view(run_dir, groundtruth) if groundtruth is not None else None
    continuations: list[tuple[str, str] | None] = [None] * len(queries)
    if continuation_tokens:
        continuations = greedy_continuations(_recorded_path(run_dir, info, "model"), queries, continuation_tokens)
    data = _report_data(run_dir, info, scores, train, queries, continuations, k, lds)
    out = Path(out_path) if out_path is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(data), encoding="utf-8")
    return out


def _recorded_path(run_dir: Path, info: dict[str, Any], name: str) -> Path:
    recorded = info.get("inputs", {}).get(name)
    if not recorded:
        raise StrideError(f"{run_dir}/info.json records no {name} path (only runs of stride attribute have a report)")
    path = Path(recorded)
    if not path.exists():
        raise StrideError(f"the {name} path recorded in {run_dir}/info.json is gone: {path}")
    wanted = info.get("digests", {}).get(name)
    if wanted is not None and (model_digest(path) if name == "model" else content_digest(path)) != wanted:
        raise StrideError(f"the {name} at {path} changed after the run in {run_dir} (its sha256 differs from the one "
                          "recorded in info.json)")  # fmt: skip
    return path


def _check_sizes(run_dir: Path, scores: np.ndarray, n_train: int, n_queries: int) -> None:
    if scores.ndim != 2 or scores.shape != (n_queries, n_train):
        raise StrideError(
            f"{run_dir}: the scores are {list(scores.shape)} but its recorded files hold {n_queries} queries and "
            f"{n_train} training examples: the files changed after the run"
        )


def extremes(row: np.ndarray, k: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The k highest and k lowest scores of one query, as (train index, score), in the order of
    the run's top.jsonl (stable sort, descending; the bottom is its reverse)."""
    order = np.argsort(-row, kind="stable")
    return [(int(i), float(row[i])) for i in order[:k]], [(int(i), float(row[i])) for i in order[::-1][:k]]


def _fields(row: dict[str, Any]) -> dict[str, str]:
    """The fields beside the text, as strings of at most FIELD_CHARS characters."""
    fields = {name: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
              for name, value in row.items() if name not in TEXT_FIELDS}  # fmt: skip
    return {name: value if len(value) <= FIELD_CHARS else value[: FIELD_CHARS - 1] + "…"
            for name, value in fields.items()}  # fmt: skip


def _parts(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "text" in row:
        return [("text", row["text"])]
    return [("prompt", row["prompt"]), ("completion", row["completion"])]


def _report_data(
    run_dir: Path, info: dict[str, Any], scores: np.ndarray, train: datasets.Dataset, queries: datasets.Dataset,
    continuations: list[tuple[str, str] | None], k: int, lds: LDSView | None,
) -> ReportData:  # fmt: skip
    per_query: list[float | None] = [None] * len(queries)
    if lds is not None:  # strict JSON: an excluded query's NaN became None
        per_query = [math.nan if value is None else value for value in lds.summary["per_query"]]
    views = []
    for index, row in enumerate(queries):
        top, bottom = extremes(scores[index], k)
        views.append(QueryView(index, _parts(row), _fields(row), continuations[index], top, bottom, per_query[index]))
    used = sorted({i for view in views for i, _ in view.top + view.bottom})
    rows = train.select(used)
    examples = {i: ExampleView("".join(text for _, text in _parts(row)), _fields(row)) for i, row in zip(used, rows)}
    facts = [
        ("run", str(run_dir)), ("method", str(info.get("method"))),
        *((name, str(info.get("inputs", {}).get(name))) for name in ("model", "train", "queries")),
        ("queries x training examples", f"{scores.shape[0]} x {scores.shape[1]}"),
        ("shown per query", f"the {min(k, scores.shape[1])} most and least influential training examples"),
        ("scores", "positive: training on the example lowers the query's loss (loss units)"),
    ]  # fmt: skip
    data = ReportData(f"stride report: {run_dir.name}", facts, views, examples, lds)
    if any(continuation is not None for continuation in continuations):
        data.notes.append("Highlighted after each query: the model's greedy continuation of the query's first half "
                          "(of its prompt, for prompt/completion queries).")  # fmt: skip
    return data


def _lds_view(run_dir: Path, groundtruth: str | Path) -> LDSView:
    """The LDS of the run's scores against the ground truth, and its plot when matplotlib is there."""
    from stride.api import lds

    if importlib.util.find_spec("matplotlib") is None:
        return LDSView(lds(run_dir, groundtruth).to_dict(), None)
    with tempfile.TemporaryDirectory(prefix="stride-report-") as scratch:
        plot = Path(scratch) / "lds.png"
        report = lds(run_dir, groundtruth, plot_path=plot)
        return LDSView(report.to_dict(), plot.read_bytes())


def greedy_continuations(model_dir: Path, queries: datasets.Dataset, n_tokens: int) -> list[tuple[str, str] | None]:
    """Per query (prefix, greedy continuation): the prefix is the first half of a text query's
    tokens, or a prompt/completion query's prompt; None for an empty prefix."""
    from stride.models import context_length, load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    n_tokens = min(n_tokens, context_length(model, tokenizer) // 2)
    room = context_length(model, tokenizer) - n_tokens
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None), 0)
    results: list[tuple[str, str] | None] = []
    for row in queries:
        if "text" in row:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            ids = ids[: max(1, len(ids) // 2)]
        else:
            ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        prompt = (bos + ids)[-room:]
        if not ids or not prompt:
            results.append(None)
            continue
        generated = _generate(model, prompt, n_tokens, pad)
        results.append((tokenizer.decode(ids), tokenizer.decode(generated, skip_special_tokens=True)))
    return results


def _generate(model: torch.nn.Module, prompt: list[int], n_tokens: int, pad: int) -> list[int]:
    hf_model: Any = model  # a Hugging Face model: generate is not in nn.Module's stubs
    input_ids = torch.tensor([prompt], dtype=torch.long)
    with torch.inference_mode():
        output = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n_tokens,
                                   do_sample=False, pad_token_id=pad)  # fmt: skip
    return output[0, len(prompt) :].tolist()
