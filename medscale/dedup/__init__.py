"""Corpus reduction: perceptual hashes, MinHash-LSH and per-volume greedy reduction (issue 3)."""
