"""STRIDE mixed with a gradient method, on the benchmark matrix's cells: chosen on half A, confirmed on half B.

Reads the finished language-model cells of `bench.matrix` (their stored score matrices and ground
truth; nothing is retrained or rescored) and evaluates, per cell, the per-query mix in standard
units (1 - w) z(stride) + w z(partner) for partner in ekfac, astra, logra and w = 0, 0.1, ..., 1
(`stride.method.hybrid.mix`; w = 0 is STRIDE alone, w = 1 the partner alone). The weight and partner
are chosen on half A only, by the mean ratio to the best single baseline of each cell, and then
reported on half B. As a control, the same mix of two baselines (no STRIDE) shows whether STRIDE
adds anything that a second gradient method would not.

Prints the configuration and a table; writes OUT/mixtures.json.

    python -m bench.matrix_mixtures [--out runs/bench_matrix] [--partners ekfac astra logra]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from bench.matrix import BASELINE_NAMES, groundtruth_folder
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds
from stride.method.hybrid import mix

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def stored_scores(cell_root: Path, method: str) -> np.ndarray | None:
    """A method's stored score matrix in a matrix cell (float64 [queries, n]), None when it has none."""
    path = cell_root / "runs" / method / "scores.safetensors"
    return load_file(str(path))["scores"].double().numpy() if path.is_file() else None


def cell_mixtures(cell_root: Path, cell: dict[str, Any], partners: list[str]) -> tuple[dict[str, float], dict]:
    """LDS of every mixture of one cell, keyed 'A+B@w' (w = 0: A alone), and the best single baseline's
    LDS under 'best_baseline'; and each mixture's 95% bootstrap interval over queries."""
    subsets, losses = load_groundtruth(groundtruth_folder(cell_root, cell["n_subsets"], cell["n_seeds"]))
    scores = {m: s for m in ["stride", *partners] if (s := stored_scores(cell_root, m)) is not None}
    values: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}
    for first, second in [("stride", p) for p in partners] + list(itertools.combinations(partners, 2)):
        if first not in scores or second not in scores:
            continue
        for weight in WEIGHTS:
            report = evaluate_lds(mix(scores[first], scores[second], weight), subsets, losses, seed=0)
            values[f"{first}+{second}@{weight}"] = report.mean
            intervals[f"{first}+{second}@{weight}"] = [report.ci_low, report.ci_high]
    values["best_baseline"] = max(row["lds"] for m, row in cell["rows"].items() if m in BASELINE_NAMES)
    return values, intervals


def half_means(per_cell: dict[str, dict[str, float]], halves: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per half and per mixture: mean LDS and mean ratio to each cell's best single baseline."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for half in ("A", "B"):
        cells = [name for name in per_cell if halves[name] == half]
        if not cells:
            continue
        keys = set.intersection(*(set(per_cell[c]) for c in cells)) - {"best_baseline"}
        summary[half] = {
            key: {"lds": float(np.mean([per_cell[c][key] for c in cells])),
                  "ratio": float(np.mean([per_cell[c][key] / per_cell[c]["best_baseline"] for c in cells]))}
            for key in sorted(keys)
        }  # fmt: skip
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_matrix")
    parser.add_argument("--partners", nargs="+", default=["ekfac", "astra", "logra"])
    args = parser.parse_args()
    print("configuration:", json.dumps(vars(args)))
    matrix = json.loads((Path(args.out) / "matrix.json").read_text())["cells"]
    per_cell, intervals, halves = {}, {}, {}
    for name, cell in matrix.items():
        root = Path(args.out) / name
        if not (root / "runs" / "stride" / "scores.safetensors").is_file():
            continue  # the classifier cell keeps no score matrices
        per_cell[name], intervals[name] = cell_mixtures(root, cell, args.partners)
        halves[name] = cell["half"]
        print(f"{name} ({cell['half']}): best baseline {per_cell[name]['best_baseline']:.3f}", flush=True)
    summary = half_means(per_cell, halves)
    if "A" not in summary:
        raise SystemExit("no finished cell of half A")

    def best_on_a(keys: list[str]) -> str:
        return max(keys, key=lambda k: summary["A"][k]["ratio"])

    chosen = {"with stride": best_on_a([k for k in summary["A"] if k.startswith("stride+")]),
              "baselines only": best_on_a([k for k in summary["A"] if not k.startswith("stride+")])}  # fmt: skip
    print(f"\n{'mixture':<24}" + "".join(f"{h + ' LDS':>10}{h + ' ratio':>10}" for h in summary))
    for key in sorted(summary["A"]):
        line = "".join(f"{summary[h][key]['lds']:>10.3f}{summary[h][key]['ratio']:>10.3f}" for h in summary)
        print(f"{key:<24}{line}")
    for label, key in chosen.items():
        confirmed = {h: summary[h].get(key) for h in summary}
        print(f"chosen on half A ({label}): {key} -> {json.dumps(confirmed)}")
    per_cell_chosen = {name: {key: per_cell[name].get(key) for key in chosen.values()} for name in per_cell}
    print("per cell:", json.dumps(per_cell_chosen, indent=1))
    write_json(Path(args.out) / "mixtures.json", {"configuration": vars(args), "halves": halves, "per_cell": per_cell,
                                                  "intervals": intervals, "summary": summary,
                                                  "chosen_on_half_A": chosen})  # fmt: skip
    print(f"wrote {Path(args.out) / 'mixtures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
