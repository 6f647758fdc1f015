"""Benchmarks checking the DESIGN section 6 performance bars; ``python -m benchmarks`` runs them all."""
