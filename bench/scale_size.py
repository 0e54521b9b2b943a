"""Part `size` of bench.scale (issue 14, part a): wall time and peak memory against model size on the CPU.

For each shape of `--size-shapes` (ARCHITECTURE:LAYERSxWIDTH:VOCABULARY; GPT-2 with width / 64 heads and
an MLP 4 x wide, Qwen2 with Qwen2-0.5B's proportions: width / 64 heads, a seventh of them key-value
heads, MLP 4864 / 896 x wide, tied embeddings), a randomly initialised model with context
`--size-context` (timing only: untrained weights change no method's amount of work). Every model
shares one small byte-level BPE tokenizer trained on the training texts (`--size-tokenizer-vocab`
tokens): the embedding and output head keep the shape's full vocabulary, which is what costs. The data
are `--size-n` training examples and `--size-queries` queries of the embedded fortune corpus, cut to
the context by stride's own truncation.

Each measurement runs alone in its own process (wall seconds, peak RSS of the process): one forward
pass over the training set with the per-example losses (the unit), STRIDE with one design, STRIDE's
default (two designs and the first-order mix), EK-FAC and LoGra (`stride attribute --method ...`,
`modules: auto`: they leave the output head out above a 16,384-token vocabulary). A method's time is
also given as a multiple of the forward pass: the seconds of its whole `attribute` call (model and
data loading included, interpreter start not) over the forward pass' seconds. That pass runs batches of
64 examples in file order, each padded to its longest example (nearly always the context), as
bench.cost_vs_size's does; STRIDE's operator training groups its batches by length.

Two stated memory rules adapt STRIDE (each shape's record names what they chose):
- the logit form is used while its bank of K operators with Adam (K x vocab x rank float32 numbers,
  three copies) takes at most `--size-logit-bank-gib`; above, the vocabulary-free form (hashed_logit with
  1024 buckets, second-order training and measurement: no logits over the vocabulary per
  (example, subset) pair);
- with the logit form, the operator-training batch is the default 16 examples unless a step's steered
  logits (batch x d x context x vocab float32 numbers) would exceed `--size-step-logits-gib`; then it
  is as large as fits (>= 1).

A measurement that fails or runs past `--size-timeout` seconds is recorded with its reason and the
part goes on. OUT/size.json is written after every measurement; a rerun skips the measurements it
holds (delete an entry to measure it again) and refuses another configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.measuring import measure, stride_command
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.corpus import build_benchmark_corpus
from stride.data import read_examples
from stride.lm_training import train_tokenizer
from stride.method.operators import LOGIT, bank_parameters, training_bytes
from stride.models import head_factor_fits, load_tokenizer

DEFAULT_SHAPES = ["gpt2:2x128:1024", "gpt2:4x256:50257", "gpt2:6x512:50257", "gpt2:12x768:50257", "qwen2:4x896:151936"]
METHODS = {"stride_one_design": "stride", "stride_default": "stride", "ekfac": "ekfac", "logra": "logra"}
MEASUREMENTS = ["forward", *METHODS]  # the forward pass is the unit
VOCABULARY_FREE = {
    "form": "hashed_logit",
    "output_rank": 1024,
    "measure_expansion": "second_order",
    "training_expansion": "second_order",
}
FORWARD = (
    "import json, sys, torch; from bench.cost_vs_size import forward_seconds; "
    "torch.set_num_threads(int(sys.argv[3])); print(json.dumps(forward_seconds(*sys.argv[1:3], int(sys.argv[4]))))"
)
CONFIGURATION = ("size_n", "size_queries", "size_context", "size_tokenizer_vocab", "threads", "size_logit_bank_gib",
                 "size_step_logits_gib")  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """A model shape: architecture, depth, width and vocabulary; heads and MLP follow the architecture."""

    architecture: str
    layers: int
    width: int
    vocab: int

    @classmethod
    def parse(cls, spec: str) -> Shape:
        try:
            architecture, size, vocab = spec.split(":")
            layers, width = (int(x) for x in size.split("x"))
            shape = cls(architecture, layers, width, int(vocab))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {spec!r} is not ARCHITECTURE:LAYERSxWIDTH:VOCABULARY") from None
        if architecture not in ("gpt2", "qwen2"):
            raise argparse.ArgumentTypeError(f"shape {spec!r}: the architecture must be gpt2 or qwen2")
        return shape

    @property
    def name(self) -> str:
        return f"{self.architecture}:{self.layers}x{self.width}:{self.vocab}"

    @property
    def folder(self) -> str:
        return self.name.replace(":", "_")

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)

    def sizes(self, context: int) -> dict[str, Any]:
        """The transformers config arguments of this shape (special token ids apart)."""
        if self.architecture == "gpt2":
            return {
                "vocab_size": self.vocab,
                "n_positions": context,
                "n_embd": self.width,
                "n_layer": self.layers,
                "n_head": self.heads,
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
            }
        return {
            "vocab_size": self.vocab,
            "hidden_size": self.width,
            "intermediate_size": 4864 * self.width // 896,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": math.gcd(self.heads, max(1, self.heads // 7)),
            "max_position_embeddings": context,
            "tie_word_embeddings": True,
        }


def save_random_lm(
    folder: Path, config_class: Any, tokenizer: Any, dtype: torch.dtype = torch.float32, **sizes: Any
) -> int:
    """Save a randomly initialised (seed 0) causal LM of `config_class(**sizes)` with `tokenizer`, whose
    special tokens it takes; returns its parameter count."""
    import transformers

    config = config_class(
        **sizes,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def shape_model(shape: Shape, context: int, tokenizer: Any, folder: Path) -> dict[str, Any]:
    """The shape's model in `folder` (built unless shape.json records the same shape and context); its record."""
    import transformers

    sizes = shape.sizes(context)
    record_path = folder / "shape.json"
    if record_path.is_file() and json.loads(record_path.read_text())["sizes"] == sizes:
        return json.loads(record_path.read_text())
    config_class = transformers.GPT2Config if shape.architecture == "gpt2" else transformers.Qwen2Config
    parameters = save_random_lm(folder, config_class, tokenizer, **sizes)
    record = {"shape": asdict(shape), "sizes": sizes, "parameters": parameters}
    write_json(record_path, record)
    return record


def stride_rules(shape: Shape, context: int, args: argparse.Namespace) -> dict[str, Any]:
    """STRIDE's settings at this shape by the two memory rules (module docstring), with the figures they used."""
    defaults = StrideConfig()
    bank = training_bytes(bank_parameters(LOGIT, defaults.n_subsets, shape.width, defaults.rank, shape.vocab))
    settings: dict[str, Any] = {} if bank <= args.size_logit_bank_gib * 2**30 else dict(VOCABULARY_FREE)
    per_example = 4 * defaults.subsets_per_example * context * shape.vocab
    batch = max(1, min(defaults.batch_size, int(args.size_step_logits_gib * 2**30 // per_example)))
    if batch < defaults.batch_size and not settings:  # second-order training holds no steered logits
        settings["batch_size"] = batch
    return {"settings": settings, "logit_bank_gib": bank / 2**30, "step_logits_gib_per_example": per_example / 2**30}


def _data(folder: Path, args: argparse.Namespace) -> tuple[dict[str, Path], Any]:
    """The training set and queries, and the shared tokenizer (trained once on the training texts)."""
    data = build_benchmark_corpus(folder / "data", n_train=args.size_n, n_queries=args.size_queries, n_pretrain=0)
    if not (folder / "tokenizer" / "tokenizer.json").is_file():
        texts = [row["text"] for row in read_examples(data["train"])]
        train_tokenizer(texts, args.size_tokenizer_vocab).save_pretrained(str(folder / "tokenizer"))
    return data, load_tokenizer(folder / "tokenizer")


def _previous(path: Path, configuration: dict[str, Any]) -> dict[str, Any]:
    """The results recorded so far under the same configuration (none yet: empty); another one stops the part."""
    if not path.is_file():
        return {"configuration": configuration, "shapes": {}, "measurements": {}}
    results = json.loads(path.read_text())
    differ = {
        k: (results["configuration"].get(k), v)
        for k, v in configuration.items()
        if results["configuration"].get(k) != v
    }
    if differ:
        raise SystemExit(f"{path} was measured with other settings (recorded, requested: {differ}); use another --out")
    return results


def _measurement(
    name: str, model: Path, data: dict[str, Path], run: Path, config: Path | None, args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement in its own process: the forward pass (its seconds) or an `attribute` run into `run`
    (its total and per-stage seconds)."""
    if name == "forward":
        command = ["-c", FORWARD, str(model), str(data["train"]), str(args.threads), str(args.size_context)]
    else:
        shutil.rmtree(run, ignore_errors=True)  # a run cut short would resume its stages and be timed short
        command = stride_command(model, data["train"], data["queries"], run, args.threads, config, METHODS[name])
    result = measure([sys.executable, *command], timeout=args.size_timeout)
    stdout = result.pop("stdout")
    if result["status"] == "ok" and name == "forward":
        result["seconds"] = json.loads(stdout.splitlines()[-1])[0]  # (seconds, parameters): shape.json has the latter
    elif result["status"] == "ok":
        timings = json.loads((run / "info.json").read_text())["timings_seconds"]
        result.update(seconds=timings["total"], stage_seconds=timings)
    return result


def _configs(folder: Path, settings: dict[str, Any]) -> dict[str, Path]:
    """The --config files of the two STRIDE measurements at one shape."""
    folder.mkdir(parents=True, exist_ok=True)
    one, default = folder / "stride_one_design.json", folder / "stride_default.json"
    write_json(one, {**settings, "designs": 1})
    write_json(default, settings)
    return {"stride_one_design": one, "stride_default": default}


def part_size(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure every shape x measurement not yet in OUT/size.json; print the table. Returns where it wrote."""
    folder, path = out / "size", out / "size.json"
    results = _previous(path, {k: getattr(args, k) for k in CONFIGURATION})
    data, tokenizer = _data(folder, args)
    for shape in map(Shape.parse, args.size_shapes):
        model = folder / "models" / shape.folder
        record = shape_model(shape, args.size_context, tokenizer, model)
        stride = stride_rules(shape, args.size_context, args)
        results["shapes"][shape.name] = {
            **record,
            "stride": stride,
            "baselines_track_head": head_factor_fits(shape.vocab),
        }
        configs = _configs(folder / "configs" / shape.folder, stride["settings"])
        done = results["measurements"].setdefault(shape.name, {})
        for name in args.size_measurements:
            if name in done:
                continue
            result = _measurement(name, model, data, folder / "runs" / shape.folder / name, configs.get(name), args)
            forward = done.get("forward", {}).get("seconds")
            if forward and "seconds" in result and name != "forward":
                result["forward_multiple"] = result["seconds"] / forward
            done[name] = result
            print(f"[{shape.name}] {name}: {_cell(result)}", flush=True)
            write_json(path, results)
    print(size_table(results))
    return {"json": str(path), "shapes": list(results["measurements"])}


def _cell(result: dict[str, Any]) -> str:
    """One measurement in a line."""
    if result["status"] != "ok":
        return f"{result['status']} ({result['reason'][:200]})"
    multiple = f" = {result['forward_multiple']:.1f} forward passes" if "forward_multiple" in result else ""
    seconds, wall, memory = result["seconds"], result["wall_seconds"], result["peak_rss_gib"]
    return f"{seconds:.1f} s{multiple} (wall {wall:.1f} s), peak RSS {memory:.2f} GiB"


def _notes(shape: dict[str, Any], measurement: str, result: dict[str, Any]) -> str:
    """What the table says beside a measurement: why it failed, STRIDE's settings, a head left out."""
    if result["status"] != "ok":
        return result["reason"].splitlines()[0][:120]
    if measurement.startswith("stride"):
        return json.dumps(shape["stride"]["settings"]) if shape["stride"]["settings"] else "logit form"
    if measurement in ("ekfac", "logra") and not shape["baselines_track_head"]:
        return "output head not tracked"
    return ""


def size_table(results: dict[str, Any]) -> str:
    """One line per shape (smallest first) and measurement; per shape, EK-FAC's seconds over STRIDE's with one
    design."""
    lines = [f"{'shape':20} {'params':>7} {'measurement':18} {'status':9} {'seconds':>8} {'x fwd':>6} {'wall s':>7} "
             f"{'peak GiB':>8}  notes"]  # fmt: skip
    for name in sorted(results["measurements"], key=lambda name: results["shapes"][name]["parameters"]):
        shape, done = results["shapes"][name], results["measurements"][name]
        for measurement in (m for m in MEASUREMENTS if m in done):  # the JSON holds them sorted by name
            result = done[measurement]
            numbers = zip((result.get("seconds"), result.get("forward_multiple"), result["wall_seconds"],
                           result["peak_rss_gib"]), (8, 6, 7, 8), (1, 1, 1, 2))  # fmt: skip
            cells = " ".join(f"{x:>{w}.{p}f}" if x is not None else f"{'-':>{w}}" for x, w, p in numbers)
            lines.append(f"{name:20} {shape['parameters'] / 1e6:6.1f}M {measurement:18} {result['status']:9} {cells}  "
                         f"{_notes(shape, measurement, result)}")  # fmt: skip
        one, ekfac = done.get("stride_one_design", {}), done.get("ekfac", {})
        if "seconds" in one and "seconds" in ekfac:
            lines.append(f"{'':20} EK-FAC / STRIDE with one design: {ekfac['seconds'] / one['seconds']:.1f}x")
    return "\n".join(lines)


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """The options of part size."""
    parser.add_argument(
        "--size-shapes",
        nargs="+",
        type=lambda spec: Shape.parse(spec).name,
        default=DEFAULT_SHAPES,
        help="ARCHITECTURE:LAYERSxWIDTH:VOCABULARY, architecture gpt2 or qwen2 (part size)",
    )
    parser.add_argument("--size-measurements", nargs="+", default=MEASUREMENTS, choices=MEASUREMENTS)
    parser.add_argument("--size-n", type=int, default=256, help="training examples (part size)")
    parser.add_argument("--size-queries", type=int, default=32, help="queries (part size)")
    parser.add_argument(
        "--size-context", type=int, default=64, help="the models' context: tokens per example (part size)"
    )
    parser.add_argument(
        "--size-tokenizer-vocab", type=int, default=1024, help="the shared tokenizer's size (part size)"
    )
    parser.add_argument("--size-timeout", type=float, default=3600, help="seconds before a measurement is stopped")
    parser.add_argument(
        "--size-logit-bank-gib",
        type=float,
        default=2.0,
        help="part size: STRIDE's logit form while its bank with Adam fits this, else hashed_logit",
    )
    parser.add_argument(
        "--size-step-logits-gib",
        type=float,
        default=1.0,
        help="part size: STRIDE's training batch shrinks until a step's steered logits fit this",
    )
