"""What the analysis scripts of bench/ read from a regime folder that `python -m bench.lds` filled."""

from __future__ import annotations

from pathlib import Path


def ground_truth_folder(root: Path) -> Path:
    """The largest ground truth (most subsets x seeds) among `root`'s `groundtruth_mM_sS` folders."""

    def size(folder: Path) -> int:
        subsets, seeds = (int(part[1:]) for part in folder.name.split("_")[1:])
        return subsets * seeds

    folders = sorted(root.glob("groundtruth_m*_s*"), key=size)
    if not folders:
        raise SystemExit(f"no ground truth under {root}: run python -m bench.lds --out {root.parent} first")
    return folders[-1]
