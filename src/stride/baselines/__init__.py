"""Peer attribution methods behind the same Attributor interface as STRIDE.

One module per method: `tfidf`, `bm25` (lexical), `repsim` (representation similarity),
`gradsim` (`graddot` and `gradcos`, projected gradient similarity, TracIn-style), `logra` (LoGra:
low-rank Kronecker-projected gradients with a projected-space Fisher), `trak` (TRAK, via the
`traker` library) and `ekfac` (EK-FAC influence, via `kronfluence`). `stride.registry` imports a
method's module only when it runs, and a library only when its method runs.
"""
