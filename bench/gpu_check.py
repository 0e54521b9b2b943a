"""The CUDA path end to end, as one prepared check for a machine with a GPU (at most 8 minutes on one H200).

Part 1, agreement: a tiny GPT-2 trained from scratch on fortune sentences, ground truth by
retraining on random halves (CPU worker processes), then STRIDE on the CPU in float32 and on the
GPU in float32 with the same seed: LDS of both, their difference (target: within 0.01), the
correlation of the two score matrices and the largest score difference.

Part 2, scale: a Qwen2-0.5B-shaped model (24 blocks, width 896, 14 heads / 2 key-value heads,
MLP 4864, vocabulary 151,936; random initialisation, which changes no stage's amount of work) in
bfloat16, 20,000 training sequences of 256 tokens (fortune entries packed together) and 200
queries. STRIDE runs one design, one epoch, with the vocabulary-free hashed_logit form (1024
buckets), second-order training and measurement by default (the logit form's bank alone would
take 27 GiB, with Adam, at this vocabulary; second-order training builds no logits over the
vocabulary per (example, subset) pair), training batches of 16 examples. It reports one plain
forward pass over the training set, STRIDE's seconds per stage and the peak GPU memory
(torch.cuda.max_memory_allocated).

Prints its configuration and figures and writes OUT/gpu_check.json after each part, so a run cut
short keeps what it measured.

    python -m bench.gpu_check                        # on the GPU machine
    python -m bench.gpu_check --device cpu --smoke   # the script's own check, on a CPU, in minutes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench.scale_size import save_random_lm
from stride.api import attribute, groundtruth, lds
from stride.config import StrideConfig
from stride.core.device import resolve_device, resolve_dtype
from stride.core.jsonio import write_json
from stride.corpus import build_benchmark_corpus, read_fortunes
from stride.data import load_data, write_jsonl
from stride.lm_training import LMRecipe, train_lm, train_tokenizer

QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151_936)  # fmt: skip
SMOKE_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=8192)  # fmt: skip
AGREEMENT_STRIDE = dict(n_subsets=200, subsets_per_example=10, designs=1, epochs=3, first_order_weight=0.0)
AGREEMENT_RECIPE = LMRecipe(architecture="gpt2", n_layers=2, hidden_size=64, n_heads=2, vocab_size=512, context=128,
                            epochs=4, learning_rate=3e-3, batch_size=16)  # fmt: skip


def agreement(out: Path, device: torch.device, smoke: bool, workers: int) -> dict[str, Any]:
    """STRIDE's LDS on the CPU and on `device` (float32 both, same seed) against one ground truth."""
    n_train, n_queries, n_subsets = (120, 12, 8) if smoke else (400, 50, 32)
    data = build_benchmark_corpus(out / "agreement_data", n_train=n_train, n_queries=n_queries, n_pretrain=0)
    model = train_lm(data["train"], out / "agreement_model", AGREEMENT_RECIPE, progress=False)
    truth = out / "agreement_groundtruth"
    groundtruth(model, data["train"], data["queries"], truth, regime="scratch", n_subsets=n_subsets, n_seeds=2,
                workers=workers, progress=False)  # fmt: skip
    config = StrideConfig(**{**AGREEMENT_STRIDE, "n_subsets": 60 if smoke else 200})
    result: dict[str, Any] = {"n_train": n_train, "n_queries": n_queries, "groundtruth_subsets": n_subsets}
    scores = {}
    for name, where in (("cpu", "cpu"), ("device", str(device))):
        run = attribute(model, data["train"], data["queries"], out / f"agreement_{name}", config=config, seed=0,
                        progress=False, device=where, overwrite=True)  # fmt: skip
        scores[name] = run.scores
        report = lds(out / f"agreement_{name}" / "scores.safetensors", truth)
        result[f"lds_{name}"] = [report.mean, report.ci_low, report.ci_high]
        result[f"seconds_{name}"] = run.info["timings_seconds"]["total"]
    pair = torch.stack([scores["cpu"].flatten(), scores["device"].flatten()]).double()
    result["lds_difference"] = abs(result["lds_cpu"][0] - result["lds_device"][0])
    result["score_correlation"] = float(torch.corrcoef(pair)[0, 1])
    result["max_score_difference"] = float((pair[0] - pair[1]).abs().max())
    result["max_score"] = float(pair[0].abs().max())
    return result


def packed_texts(n: int, approx_chars: int, seed: int) -> list[dict[str, str]]:
    """`n` texts of fortune entries joined until each is at least `approx_chars` long."""
    entries = [entry for source in ("fortunes", "murphy", "startrek", "zippy") for entry in read_fortunes(source)]
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) for p in parts) < approx_chars:
            parts.append(entries[int(rng.integers(len(entries)))])
        texts.append({"text": " ".join(parts)})
    return texts


def build_qwen2(folder: Path, shape: dict[str, int], dtype: torch.dtype) -> tuple[Path, int]:
    """A random Qwen2 model of `shape` saved with a small byte-level BPE tokenizer (its ids fit the
    vocabulary); returns the folder and the parameter count."""
    import transformers

    tokenizer = train_tokenizer([row["text"] for row in packed_texts(2000, 200, seed=1)], 4096)
    parameters = save_random_lm(folder, transformers.Qwen2Config, tokenizer, dtype, **shape,
                                max_position_embeddings=4096, tie_word_embeddings=True)  # fmt: skip
    return folder, parameters


def forward_pass_seconds(model_dir: Path, train_path: Path, device: torch.device, dtype: torch.dtype,
                         length: int, batch_size: int) -> float:  # fmt: skip
    """Seconds of one forward pass (no gradients) over the training set on `device`."""
    from stride.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, dtype=dtype)
    model.to(device)
    data = load_data(train_path, tokenizer, length, name="training set")
    data.device = device
    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.batch(range(start, min(start + batch_size, len(data))))
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    synchronize(device)
    del model
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scale(out: Path, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: seconds per stage and peak GPU memory for the Qwen2-shaped model in `args.dtype`."""
    dtype = resolve_dtype(args.dtype)
    n_train, n_queries = (200, 20) if args.smoke else (args.n_train, args.n_queries)
    length = 32 if args.smoke else args.length
    train = write_jsonl(packed_texts(n_train, 6 * length, seed=2), out / "scale_data" / "train.jsonl")
    queries = write_jsonl(packed_texts(n_queries, 6 * length, seed=3), out / "scale_data" / "queries.jsonl")
    model_dir, parameters = build_qwen2(out / "scale_model", SMOKE_QWEN2 if args.smoke else QWEN2_05B, dtype)
    result: dict[str, Any] = {"n_train": n_train, "n_queries": n_queries, "length": length, "parameters": parameters,
                              "dtype": args.dtype}  # fmt: skip
    result["forward_pass_seconds"] = forward_pass_seconds(model_dir, train, device, dtype, length, 64)
    config = StrideConfig(form=args.form, output_rank=args.output_rank, measure_expansion=args.measure,
                          training_expansion=args.training_expansion, designs=1, epochs=args.epochs,
                          batch_size=args.batch_size, max_length=length,
                          n_subsets=100 if args.smoke else 1000)  # fmt: skip
    result["stride_settings"] = asdict(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = attribute(model_dir, train, queries, out / "scale_run", config=config, seed=0, progress=not args.quiet,
                    device=str(device), dtype=args.dtype, overwrite=True)  # fmt: skip
    result["stage_seconds"] = run.info["timings_seconds"]
    result["stride_seconds_in_forward_passes"] = run.info["timings_seconds"]["total"] / result["forward_pass_seconds"]
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="of the Qwen2-shaped model (part 2)")
    parser.add_argument(
        "--form",
        default="hashed_logit",
        help="STRIDE's operator form in part 2 (the logit form's bank would take 27 GiB at this vocabulary)",
    )
    parser.add_argument("--output-rank", type=int, default=1024, help="hashed_logit buckets / shared_logit rank")
    parser.add_argument("--measure", default="second_order", help="measure_expansion of part 2")
    parser.add_argument("--training-expansion", default="second_order", help="training_expansion of part 2")
    parser.add_argument("--batch-size", type=int, default=16, help="operator-training batch (part 2)")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-queries", type=int, default=200)
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence (part 2)")
    parser.add_argument("--epochs", type=int, default=1, help="operator training epochs (part 2)")
    parser.add_argument("--workers", type=int, default=8, help="ground-truth retraining processes (part 1)")
    parser.add_argument("--parts", nargs="+", default=["agreement", "scale"], choices=["agreement", "scale"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script itself, on any device")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"configuration": {**vars(args), "resolved_device": str(device),
                                                "torch": torch.__version__, "threads": torch.get_num_threads(),
                                                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                                                else None}}  # fmt: skip
    print("configuration:", json.dumps(report["configuration"]))
    for part in args.parts:
        started = time.perf_counter()
        report[part] = (
            agreement(out, device, args.smoke, args.workers) if part == "agreement" else scale(out, device, args)
        )
        report[part]["wall_seconds"] = time.perf_counter() - started
        print(f"{part}:", json.dumps(report[part], indent=1))
        write_json(out / "gpu_check.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
