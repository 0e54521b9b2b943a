"""Peer attribution methods behind the same Attributor interface as STRIDE.

Importing this package registers every baseline by name: `tfidf`, `bm25` (lexical), `repsim`
(representation similarity), `graddot` and `gradcos` (projected gradient similarity, TracIn-style),
`trak` (TRAK, via the `traker` library), `ekfac` (EK-FAC influence, via `kronfluence`) and `logra`
(LoGra: low-rank Kronecker-projected gradients with a projected-space Fisher). The libraries of
`bm25`, `trak` and `ekfac` are imported only when that method runs.
"""

from stride.baselines import bm25, ekfac, gradsim, logra, repsim, tfidf, trak  # noqa: F401  (registers them)
