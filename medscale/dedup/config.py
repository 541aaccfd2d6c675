"""The dedup stage's config section: corpus reduction and the contamination check (`medscale dedup`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice, validate_sections
from medscale.core.errors import ConfigError
from medscale.core.executor import EXECUTOR_CHOICES
from medscale.dedup.groups import GROUPINGS
from medscale.dedup.lsh import parse_verify
from medscale.dedup.strategies import STRATEGIES
from medscale.hashing.hashes import HASH_NAMES


@dataclass
class DedupConfig:
    """Corpus reduction and the contamination check (`medscale dedup`)."""

    strategy: str = "hash-volume"  # hash-volume | hash-global | embedding | every-n | volume-overlap | minhash-global
    hash: str = "dhash"  # ahash | dhash | phash (64-bit, from the manifest)
    threshold: int = 6  # Hamming distance at or under which two slices are near-duplicates (Hash-6)
    every_n: int = 2  # every-n: keep slices 0, n, 2n... of each volume
    lsh_recall: float = 0.995  # hash-global / contamination: expected recall of pairs at `threshold`
    lsh_seed: int = 0  # the LSH tables' seed (and the embedding strategy's k-means)
    verify: Optional[str] = None  # hash-global / contamination: also require e.g. "dhash+ahash<=16"
    groups: str = "star"  # hash-global: star (each duplicate within threshold of its exemplar) | connected
    embeddings: Optional[str] = None  # embedding: Parquet with `key` and `embedding` (list of floats)
    backbone: Optional[str] = None  # embedding: an exported backbone folder (card.json + backbone.safetensors)
    eps: float = 0.05  # embedding: duplicates when cosine similarity > 1 - eps
    containment: float = 0.25  # volume-overlap / contamination: a volume is a copy when this share of its set
    # of quantised slice hashes lies in another volume's (planted copies here: >= 0.33; different scans: < 0.01)
    num_perm: int = 128  # MinHash permutations (volume-overlap, minhash-global)
    jaccard: float = 0.4  # minhash-global: duplicates when the estimated Jaccard similarity of local codes >= this
    minhash_index: str = "auto"  # minhash-global: auto | datasketch (MinHashLSH in memory) | bands (numpy, Ray)
    clusters: int = 0  # embedding: k-means clusters; 0 = about sqrt(N)
    against: List[str] = field(default_factory=list)  # evaluation sets for the contamination check
    # the contamination check's own rule: Hash-6 alone finds unrelated small images of one modality alike (28-px
    # chest X-rays: 39% of a test split), the confirmation keeps resized copies (docs/dedup.md, "Contamination")
    against_threshold: int = 3  # dHash distance at or under which an evaluation image and a corpus slice match
    against_verify: Optional[str] = "ahash+phash<=6"  # and this too (null: the hash alone)
    exclude: bool = False  # contamination: mark corpus samples near an evaluation image as excluded
    dry_run: bool = False  # report only; leave the manifest as it is
    examples: int = 6  # duplicate groups drawn in the report's PNG grid
    executor: str = "auto"  # auto (in-process or a local pool for small work, else Ray) | ray | pool | local
    ray_address: Optional[str] = None  # None starts a local Ray; "auto" or "ray://..." joins a cluster
    num_cpus: Optional[int] = None  # for a local Ray or pool; None = all cores
    progress: bool = True  # progress bars on standard error
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged

    def validate(self, origin: str) -> None:
        """Value checks that types alone cannot express; choices come from the registries."""
        check_choice(self.strategy, tuple(STRATEGIES), origin, "dedup.strategy")
        check_choice(self.hash, HASH_NAMES, origin, "dedup.hash")
        check(0 <= self.threshold < 32, origin, "dedup.threshold", "0..31 (bits of a 64-bit hash)", self.threshold)
        check(0 <= self.against_threshold < 32, origin, "dedup.against_threshold", "0..31 (bits of a 64-bit hash)",
              self.against_threshold)
        check_choice(self.groups, tuple(GROUPINGS), origin, "dedup.groups")
        for key in ("verify", "against_verify"):
            if getattr(self, key) is not None:
                try:
                    parse_verify(getattr(self, key))
                except ValueError as exc:
                    raise ConfigError(f"{origin}: bad value for key 'dedup.{key}': {exc}", f"dedup.{key}") from None
        check(self.every_n >= 1, origin, "dedup.every_n", "an int >= 1", self.every_n)
        check(0.0 < self.lsh_recall < 1.0, origin, "dedup.lsh_recall", "a number in (0, 1)", self.lsh_recall)
        check(0.0 <= self.eps < 1.0, origin, "dedup.eps", "a number in [0, 1)", self.eps)
        check(self.clusters >= 0, origin, "dedup.clusters", "an int >= 0", self.clusters)
        check(0.0 < self.containment <= 1.0, origin, "dedup.containment", "a number in (0, 1]", self.containment)
        check(16 <= self.num_perm <= 1024, origin, "dedup.num_perm", "an int in 16..1024", self.num_perm)
        check(0.0 < self.jaccard <= 1.0, origin, "dedup.jaccard", "a number in (0, 1]", self.jaccard)
        check_choice(self.minhash_index, STRATEGIES["minhash-global"].INDEXES, origin, "dedup.minhash_index")
        check(self.examples >= 0, origin, "dedup.examples", "an int >= 0", self.examples)
        check_choice(self.executor, EXECUTOR_CHOICES, origin, "dedup.executor")
        validate_sections(self, tuple(STRATEGIES), origin, "dedup")  # a plugin strategy's own section
