"""Benchmarks (not tests). Importable so that Ray workers can load stand-ins such as ``bench.standin``."""
