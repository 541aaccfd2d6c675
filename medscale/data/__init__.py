"""Corpus ingestion (DICOM, NIfTI, PNG/JPEG, npz) into WebDataset shards with a Parquet manifest, and the loaders
that feed trainers from them.

The loaders are imported on first use, so that sharding workers (which import `medscale.data.*`) never load torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {"ShardDataset": "medscale.data.dataset", "ShardLoader": "medscale.data.dataset",
         "create_loader": "medscale.data.loaders", "ShardSummary": "medscale.data.service",
         "run_sharding": "medscale.data.service"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medscale.data' has no attribute {name!r}")
