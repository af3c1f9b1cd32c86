"""Benchmarks of asgi-attribution against the alternatives (run: ``python -m bench.run``)."""
