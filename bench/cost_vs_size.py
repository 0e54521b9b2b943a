"""Wall time against model size: STRIDE and gradient methods, next to one forward pass.

For each GPT-2 size (layers x width), a randomly initialised model with the fine-tune benchmark's
tokenizer and data (1,000 training examples, 100 queries of the embedded fortune corpus). Timing
only: the weights are not trained, which changes no method's amount of work. In one process per
size it times one forward pass over the training set (batches of 64, file order) and every
method's stages, so the ratios share their conditions. Prints the configuration and a table;
writes results.json after every size.

    python -m bench.cost_vs_size [--sizes 2x128 4x256 6x384 8x512] [--methods stride ekfac logra]
        [--stride-settings '{"designs": 1}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.lds import cached_model_matches
from stride.api import attribute
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.corpus import build_benchmark_corpus
from stride.data import load_data, read_examples
from stride.lm_training import LMRecipe, example_losses, new_causal_lm, train_tokenizer

VOCAB = 1024
CONTEXT = 128


def build_model(layers: int, width: int, texts: list[str], folder: Path) -> Path:
    """A random GPT-2 of the given size with a tokenizer trained on `texts` (cached; recipe.json records its recipe)."""
    recipe = LMRecipe(architecture="gpt2", n_layers=layers, hidden_size=width, n_heads=max(2, width // 64),
                      vocab_size=VOCAB, context=CONTEXT, seed=0)  # fmt: skip
    if not cached_model_matches(folder, recipe):
        tokenizer = train_tokenizer(texts, VOCAB)
        model = new_causal_lm(recipe, tokenizer)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_json(folder / "recipe.json", {"recipe": asdict(recipe), "base": None, "trained": False,
                                            "tokenizer_texts": len(texts)})  # fmt: skip
    return folder


def forward_seconds(model_dir: str | Path, train_path: str | Path, max_length: int = CONTEXT) -> tuple[float, int]:
    """Seconds of one forward pass (with the per-example losses) over the training set, its examples cut to
    `max_length` tokens, and the model's parameter count."""
    from stride.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    data = load_data(train_path, tokenizer, max_length, name="training set")
    started = time.perf_counter()
    example_losses(model, data)
    return time.perf_counter() - started, sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_cost")
    parser.add_argument("--sizes", nargs="+", default=["2x128", "4x256", "6x384", "8x512"], help="LAYERSxWIDTH")
    parser.add_argument("--methods", nargs="+", default=["stride", "ekfac", "logra"])
    parser.add_argument("--stride-settings", type=json.loads, default={"designs": 1},
                        help='STRIDE settings as JSON (default {"designs": 1}: the cost of one design)')  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("configuration:", json.dumps(vars(args)))
    out = Path(args.out)
    data = build_benchmark_corpus(out / "data", n_train=1000, n_queries=100)
    texts = [row["text"] for row in read_examples(data["train"])]
    rows = []
    for size in args.sizes:
        layers, width = (int(x) for x in size.split("x"))
        model_dir = build_model(layers, width, texts, out / "models" / size)
        forward, n_params = forward_seconds(model_dir, data["train"])
        row = {"size": size, "parameters": n_params, "forward_seconds": forward, "seconds": {}}
        for method in args.methods:
            config = StrideConfig.from_dict(args.stride_settings) if method == "stride" else None
            result = attribute(model_dir, data["train"], data["queries"], out / "runs" / size / method, method=method,
                               config=config, threads=args.threads, overwrite=True, progress=False)  # fmt: skip
            row["seconds"][method] = sum(v for k, v in result.info["timings_seconds"].items() if k != "total")
        rows.append(row)
        ratios = "  ".join(f"{m} {s:7.1f} s ({s / forward:5.1f} fwd)" for m, s in row["seconds"].items())
        print(f"{size:7} {n_params / 1e6:6.2f}M params  forward {forward:6.1f} s  {ratios}", flush=True)
        write_json(
            out / "results.json", {"configuration": vars(args), "threads": torch.get_num_threads(), "rows": rows}
        )
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
