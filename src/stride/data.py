"""Training and query data: JSONL or `datasets` folders -> memory-mapped token ids and loss masks.

One line (row) is one example. `text` rows are scored on every token (pre-training style);
`prompt` + `completion` rows only on the completion (fine-tuning style). BOS is prepended when the
tokenizer has one and EOS appended, so an example's loss is the mean next-token cross-entropy over
its scored tokens, EOS included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
import torch

from stride.core.digest import file_digest
from stride.errors import StrideError

logger = logging.getLogger(__name__)
datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()

TEXT = "text"
PROMPT_COMPLETION = "prompt_completion"


@dataclass
class Batch:
    """Right-padded tensors for a list of examples; loss_mask[b, t] marks token t as a target."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> Batch:
        """The batch made of the given rows (repeats allowed), at the same width."""
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.loss_mask[rows])

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (itself when it is there already)."""
        if self.input_ids.device == device:
            return self
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


def read_examples(path: str | Path) -> datasets.Dataset:
    """Load a JSONL file or a `datasets.save_to_disk` folder and check that its rows are usable."""
    path = Path(path)
    if not path.exists():
        raise StrideError(f"data file not found: {path}")
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise StrideError(f"{path} is not a dataset saved with datasets.save_to_disk: {exc}") from exc
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise StrideError(f"{path} holds splits {list(ds)}; save a single split or a 'train' split")
            ds = ds["train"]
    else:
        if path.stat().st_size == 0 or not path.read_bytes()[:4096].strip():
            raise StrideError(f"data file is empty: {path}")
        _check_jsonl_lines(path, HEAD_LINES)
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as exc:
            _check_jsonl_lines(path)  # names the first bad line past the head, when there is one
            raise StrideError(f"cannot read {path} as JSON lines: {exc}") from exc
    if len(ds) == 0:
        raise StrideError(f"data file has no examples: {path}")
    _check_fields(ds, path)
    return ds


HEAD_LINES = 1000  # lines checked before Arrow reads a file; all of them are checked when Arrow fails


def _check_jsonl_lines(path: Path, n_lines: int | None = None) -> None:
    """Name the first malformed line (not UTF-8, not JSON, not an object, no usable field) among the
    first `n_lines` (None: all), before Arrow gives a vaguer error."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if n_lines is not None and number > n_lines:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise StrideError(f"{path}, line {number}: not UTF-8 text (byte {raw[exc.start]:#x} at column "
                                  f"{exc.start + 1}); save the file as UTF-8") from None  # fmt: skip
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StrideError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise StrideError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            if "text" not in row and not ("prompt" in row and "completion" in row):
                raise StrideError(
                    f"{path}, line {number}: needs a 'text' field or 'prompt' and 'completion' fields, "
                    f"found {sorted(row)}"
                )


def data_kind(ds: datasets.Dataset) -> str:
    """TEXT or PROMPT_COMPLETION, from the columns of a checked dataset."""
    return TEXT if TEXT in ds.column_names else PROMPT_COMPLETION


def _check_fields(ds: datasets.Dataset, path: Path) -> None:
    columns = set(ds.column_names)
    if "text" in columns:
        needed = ["text"]
    elif {"prompt", "completion"} <= columns:
        needed = ["prompt", "completion"]
    else:
        raise StrideError(
            f"{path}: rows need a 'text' field or 'prompt' and 'completion' fields, found {sorted(columns)}"
        )
    for name in needed:
        column = ds.data.column(name)
        if column.null_count:
            first = next(i for i, value in enumerate(column.to_pylist()) if value is None)
            raise StrideError(f"{path}: {column.null_count} row(s) lack '{name}' (first at line {first + 1})")
        if not str(column.type).startswith(("string", "large_string")):
            raise StrideError(f"{path}: field '{name}' must hold strings, found {column.type}")
    _check_not_empty(ds, needed[-1], path)


def _check_not_empty(ds: datasets.Dataset, scored: str, path: Path) -> None:
    """Refuse data whose scored field (text, or completion) is blank everywhere; warn when some are."""
    column = ds.data.column(scored)
    blank = int(pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)).as_py() or 0)
    if blank == len(ds):
        raise StrideError(f"{path}: every example's '{scored}' is empty, so there is nothing to attribute")
    if blank:
        warnings.warn(f"{path}: {blank} of {len(ds)} example(s) have an empty '{scored}' (only BOS/EOS are scored)",
                      stacklevel=3)  # fmt: skip


class TokenizedData:
    """Examples tokenized once into an Arrow table (memory-mapped when it comes from a file)."""

    def __init__(
        self, examples: datasets.Dataset, tokenizer: Any, max_length: int, name: str = "data", digest: str = ""
    ):
        self.examples = examples
        self.name = name
        self.digest = digest
        self.kind = data_kind(examples)
        self.max_length = max_length
        self.pad_id = _pad_id(tokenizer)
        self.device = torch.device("cpu")  # where batch() puts its tensors (the model's device)
        self.tokens = examples.map(
            _Tokenize(tokenizer, max_length, self.kind),
            batched=True,
            remove_columns=examples.column_names,
            new_fingerprint=_fingerprint(examples, tokenizer, max_length),
            desc=f"tokenizing {name}",
        ).with_format("numpy")
        self.lengths = pc.list_value_length(self.tokens.data.column("input_ids")).to_numpy()
        self.n_truncated = int(sum(self.tokens["truncated"]))
        if self.n_truncated:
            warnings.warn(
                f"{name}: {self.n_truncated} of {len(self)} example(s) are longer than {max_length} "
                "tokens and were truncated",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: Sequence[int]) -> Batch:
        """Right-padded tensors for the examples at `indices`, on `self.device`."""
        rows = self.tokens.select_columns(["input_ids", "loss_mask"])[list(map(int, indices))]
        width = max(len(ids) for ids in rows["input_ids"])
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        loss_mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, (ids, mask) in enumerate(zip(rows["input_ids"], rows["loss_mask"])):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
            loss_mask[row, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
        return Batch(input_ids, attention, loss_mask).to(self.device)

    def display_text(self, index: int) -> str:
        """The example as a person reads it (prompt and completion joined)."""
        row = self.examples[int(index)]
        if self.kind == TEXT:
            return row["text"]
        return row["prompt"] + row["completion"]


class _Tokenize:
    """Batched map function: token ids with BOS/EOS and the mask of scored target tokens."""

    def __init__(self, tokenizer: Any, max_length: int, kind: str):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.kind = kind
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.kind == TEXT:
            prompts: list[list[int]] = [[] for _ in batch["text"]]
            completions = self._ids(batch["text"])
        else:
            prompts = self._ids(batch["prompt"])
            completions = self._ids(batch["completion"])
        out: dict[str, list] = {"input_ids": [], "loss_mask": [], "truncated": []}
        for prompt, completion in zip(prompts, completions):
            ids, mask, truncated = self._join(prompt, completion + self.eos)
            out["input_ids"].append(ids)
            out["loss_mask"].append(mask)
            out["truncated"].append(truncated)
        return out

    def _join(self, prompt: list[int], target: list[int]) -> tuple[list[int], list[int], bool]:
        """BOS + prompt + target; when too long, cut the target's end, then the prompt's start."""
        room = self.max_length - len(self.bos)
        truncated = len(prompt) + len(target) > room
        if truncated:
            target = target[:room]
            keep = room - len(target)
            prompt = prompt[len(prompt) - keep :] if keep > 0 else []
        ids = self.bos + prompt + target
        mask = [0] * (len(self.bos) + len(prompt)) + [1] * len(target)
        mask[0] = 0  # the first token has no context, so it is never a target
        return ids, mask, truncated


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _fingerprint(examples: datasets.Dataset, tokenizer: Any, max_length: int) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    key = f"{examples._fingerprint}|{type(tokenizer).__name__}|{vocab}|{max_length}|v1"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def load_data(path: str | Path, tokenizer: Any, max_length: int, name: str | None = None) -> TokenizedData:
    """Read and tokenize one data file; `name` labels warnings and progress bars."""
    examples = read_examples(path)
    digest = f"{file_digest(path)}:{max_length}"
    return TokenizedData(examples, tokenizer, max_length, name=name or Path(path).name, digest=digest)


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines (UTF-8, one object per line). The file is replaced in one step, so a
    process reading it meanwhile sees the old or the new content, never part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)
    return path
