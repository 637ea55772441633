"""Experiments: paper studies (`experiments.paper`) and benchmarks (`experiments.bench`)."""
