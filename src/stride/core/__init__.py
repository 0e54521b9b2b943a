"""Numerics shared by STRIDE, the baselines and the evaluation: batching, random sketches, rank
correlation, digests and JSON. Nothing here imports the rest of stride (except its error type),
so every other package can build on it without an import cycle."""
