"""Benchmarks: ``python -m bench`` runs every comparison side by side in one process."""
