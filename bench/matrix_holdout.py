"""Half C of the benchmark matrix: does what halves A and B chose hold on cells never used to choose?

Reads the finished half-C cells of `bench.matrix` (OUT/matrix.json and its stored scores; nothing
is retrained or rescored) and, per cell, sets STRIDE as the README advises for the cell's regime
against the best single baseline:
  - STRIDE at its defaults;
  - the README's STRIDE for the regime: after gentle fine-tuning `second_layer: auto`
    (OUT/matrix_second_auto.json, from `--method-settings '{"stride": {"second_layer": "auto"}}'
    --tag _second_auto`), elsewhere the defaults;
  - STRIDE with its partner at the shipped weight: ASTRA for language models, mixed here from the
    two stored score matrices as `--partner astra` mixes them (per query in standard units, w =
    StrideConfig's partner_weight), and EK-FAC for classifiers (OUT/matrix_partner_ekfac.json, from
    `--method-settings '{"stride": {"partner": "ekfac"}}' --tag _partner_ekfac`), as the README advises.
Nothing is chosen here: every weight is the one chosen on half A.

Prints the configuration and one table; writes OUT/holdout.json.

    python -m bench.matrix_holdout [--out runs/bench_matrix]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.matrix import BASELINE_NAMES, CELLS, groundtruth_folder
from bench.matrix_mixtures import stored_scores
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds
from stride.method.hybrid import mix


def tagged_stride(out: Path, tag: str, cell: str) -> dict[str, Any] | None:
    """STRIDE's row of one cell in OUT/matrix{tag}.json, None when that run is missing."""
    path = out / f"matrix{tag}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["cells"].get(cell, {}).get("rows", {}).get("stride")


def astra_partner_lds(root: Path, cell: dict[str, Any], weight: float) -> float | None:
    """LDS of STRIDE + ASTRA mixed at `weight` from the cell's stored scores (None without both)."""
    stride, astra = stored_scores(root, "stride"), stored_scores(root, "astra")
    if stride is None or astra is None:
        return None
    subsets, losses = load_groundtruth(groundtruth_folder(root, cell["n_subsets"], cell["n_seeds"]))
    return evaluate_lds(mix(stride, astra, weight), subsets, losses, seed=0).mean


def cell_verdict(out: Path, name: str, cell: dict[str, Any], weight: float) -> dict[str, Any]:
    """STRIDE's defaults, its regime's advised setting and its partner mix against the best baseline."""
    rows = cell["rows"]
    baselines = {m: row["lds"] for m, row in rows.items() if m in BASELINE_NAMES}
    best = max(baselines, key=lambda m: baselines[m])
    advised = rows.get("stride")
    if cell["regime"] == "gentle":
        advised = tagged_stride(out, "_second_auto", name)
    if cell["regime"] == "classifier":
        partner = tagged_stride(out, "_partner_ekfac", name)
        partner_lds = None if partner is None else partner["lds"]
    else:
        partner_lds = astra_partner_lds(out / name, cell, weight)
    lds = {"stride": rows["stride"]["lds"] if "stride" in rows else None,
           "stride_advised": None if advised is None else advised["lds"], "stride_partner": partner_lds}  # fmt: skip
    return {"regime": cell["regime"], "best_baseline": best, "best_baseline_lds": baselines[best],
            "ekfac_lds": baselines.get("ekfac"), "lds": lds,
            "ratio": {k: None if v is None else v / baselines[best] for k, v in lds.items()},
            "ceiling": next(iter(rows.values()))["ceiling"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_matrix")
    args = parser.parse_args()
    weight = StrideConfig().partner_weight
    print("configuration:", json.dumps({**vars(args), "astra_partner_weight": weight}))
    out = Path(args.out)
    stored = json.loads((out / "matrix.json").read_text())["cells"]
    cells = {c.name: stored[c.name] for c in CELLS if c.half == "C" and c.name in stored}
    if not cells:
        raise SystemExit(f"no half-C cell in {out / 'matrix.json'}: run python -m bench.matrix --halves C first")
    verdicts = {name: cell_verdict(out, name, cell, weight) for name, cell in cells.items()}

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"\n{'cell':<28}{'best baseline':>22}{'ekfac':>8}{'stride':>8}{'advised':>9}{'+partner':>10}{'ceiling':>9}")
    for name, v in verdicts.items():
        lds, best = v["lds"], f"{v['best_baseline']} {v['best_baseline_lds']:.3f}"
        values = [v["ekfac_lds"], lds["stride"], lds["stride_advised"], lds["stride_partner"], v["ceiling"]]
        print(f"{name:<28}{best:>22}" + "".join(f"{shown(x):>{w}}" for x, w in zip(values, (8, 8, 9, 10, 9))))
    print("\nratio to the best baseline (stride / advised / + partner):")
    for name, v in verdicts.items():
        print(f"  {name:<28}" + " / ".join(shown(r) for r in v["ratio"].values()))
    language_models = [v for v in verdicts.values() if v["regime"] != "classifier"]
    complete = [k for k in ("stride", "stride_advised", "stride_partner")
                if language_models and all(v["ratio"][k] is not None for v in language_models)]  # fmt: skip
    means = {k: float(np.mean([v["ratio"][k] for v in language_models])) for k in complete}
    print(f"mean over the {len(language_models)} language-model cells: " + json.dumps(means))
    write_json(out / "holdout.json", {"configuration": {**vars(args), "astra_partner_weight": weight},
                                      "cells": verdicts, "language_model_mean_ratio": means})  # fmt: skip
    print(f"wrote {out / 'holdout.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
