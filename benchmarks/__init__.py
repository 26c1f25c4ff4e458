"""Reproducible benchmark commands; each writes ``benchmarks/results/<name>.json`` and a PNG."""
