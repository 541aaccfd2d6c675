"""Corpus ingestion (DICOM, NIfTI, PNG/JPEG, npz) into WebDataset shards with a Parquet manifest, and the loaders
that feed trainers from them."""

from medscale.data.loader import ShardDataset, ShardLoader
from medscale.data.loaders import create_loader
from medscale.data.service import ShardSummary, run_sharding

__all__ = ["ShardDataset", "ShardLoader", "ShardSummary", "create_loader", "run_sharding"]
