"""Benchmarks checking the performance targets (docs/ARCHITECTURE.md, "Performance targets"); ``python -m benchmarks`` runs them
all and exits non-zero when one missed a target."""
