"""Perceptual hashes (aHash, dHash, pHash), bit-identical to imagehash and batched; a leaf that `data` (at
ingest) and `dedup` both import. The resampling backends (the compiled kernel, its numpy fallback) live here too."""
