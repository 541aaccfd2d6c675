"""Corpus ingestion (DICOM, NIfTI, PNG/JPEG, npz) into WebDataset shards with a Parquet manifest."""

from medscale.data.service import ShardSummary, run_sharding

__all__ = ["ShardSummary", "run_sharding"]
