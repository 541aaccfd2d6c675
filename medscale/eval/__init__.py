"""Downstream evaluation pool over checkpoints; not built yet."""
