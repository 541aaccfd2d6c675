"""Downstream evaluation: feature sources, tasks, and the Ray evaluation pool (`medscale eval`)."""
