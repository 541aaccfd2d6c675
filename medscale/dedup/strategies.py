"""The reduction strategies, one registry and one factory: `create_strategy("hash-volume", threshold=6)`.

A strategy maps the eligible samples of a corpus to (exemplar index, distance) per sample; a sample whose
exemplar is itself is kept. Work is fanned out through an executor (Ray tasks or in-process). Each strategy
takes only its own options (a misspelled one is an error) and reads them off the `dedup` section in `from_config`.
A strategy class has `describe()`, `reduce(corpus, executor)`, `from_config(cfg)`, `COST_S` (CPU-seconds per sample,
for `executor: auto`) and `NEEDS`: what the service must put into the `Corpus` first ("embeddings", "signatures").
The built-ins share the flat `dedup` keys (`hash`, `threshold`, `num_perm`, `groups` serve several strategies and
the contamination check); another package's strategy may bring an `Options` dataclass: its section `dedup.NAME`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from medscale.core.executor import ordered_map
from medscale.core.registry import Registry
from medscale.dedup.groups import GROUPINGS
from medscale.dedup.lsh import LshPlan, merge_pairs, parse_verify, plan_lsh, table_pairs, verified
from medscale.dedup.minhash import EMPTY, band_pairs, distinct_rows, jaccard, lean, lsh_params, merge_band_pairs
from medscale.dedup.overlap import contained_pairs, overlap_decisions, set_signatures, volume_sets
from medscale.dedup.semantic import cluster_duplicates, normalize, spherical_kmeans
from medscale.dedup.volume import every_n, greedy_volume

if TYPE_CHECKING:
    from medscale.dedup.config import DedupConfig

Decisions = Tuple[np.ndarray, np.ndarray]  # (exemplar index [N], distance [N])
VOLUMES_PER_TASK = 256


@dataclass
class Corpus:
    """The samples a strategy decides on, as aligned arrays."""

    keys: np.ndarray  # [N] str
    hashes: np.ndarray  # [N] uint64, the chosen hash
    volumes: np.ndarray  # [N] volume id or None (2D images)
    slices: np.ndarray  # [N] slice index within the volume (-1 for 2D images)
    embeddings: Optional[np.ndarray] = None  # [N, D] for `embedding`
    extra: Optional[np.ndarray] = None  # [N, m] uint64: the hashes a `verify` rule checks
    signatures: Optional[np.ndarray] = None  # [N, num_perm] uint32 MinHash of local codes, for `minhash-global`

    def __len__(self) -> int:
        return len(self.keys)

    def volume_groups(self) -> List[np.ndarray]:
        """Indices of each volume's samples in slice order (2D images belong to none)."""
        has = np.array([v is not None for v in self.volumes], bool)
        idx = np.flatnonzero(has)
        if not len(idx):
            return []
        vols = self.volumes[idx].astype(str)
        order = idx[np.lexsort((self.slices[idx], vols))]
        vols_sorted = self.volumes[order].astype(str)
        cuts = np.flatnonzero(vols_sorted[1:] != vols_sorted[:-1]) + 1
        return np.split(order, cuts)


def _volume_task(batch: List[np.ndarray], threshold: int) -> List[Decisions]:
    return [greedy_volume(hashes, threshold) for hashes in batch]


def _table_task(table: int, hashes: np.ndarray, plan: LshPlan) -> np.ndarray:
    return table_pairs(hashes, plan, table)


def cross_table_task(table: int, hashes: np.ndarray, plan: LshPlan, groups: np.ndarray) -> np.ndarray:
    """Pairs of one LSH table between different `groups` only (a Ray task of the contamination check)."""
    return table_pairs(hashes, plan, table, groups)


def _cluster_task(item: Tuple[np.ndarray, np.ndarray], eps: float) -> Decisions:
    x, centroid = item
    return cluster_duplicates(x, centroid, eps)


class HashVolume:
    """Less is More's Hash-k: greedy per volume in slice order; 2D images are left alone."""

    COST_S = 2e-6  # CPU-seconds per sample (measured order of magnitude), for `executor: auto`

    def __init__(self, hash_name: str = "dhash", threshold: int = 6) -> None:
        self.hash_name, self.threshold = hash_name, threshold

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "HashVolume":
        """The strategy with the options of `cfg`."""
        return cls(hash_name=cfg.hash, threshold=cfg.threshold)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        return f"hash-volume {self.hash_name}<={self.threshold}"

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        exemplar, distance = np.arange(len(corpus)), np.zeros(len(corpus), np.float32)
        groups = corpus.volume_groups()
        batches = [groups[i:i + VOLUMES_PER_TASK] for i in range(0, len(groups), VOLUMES_PER_TASK)]
        items = [[corpus.hashes[g] for g in batch] for batch in batches]
        for batch, decided in zip(batches, ordered_map(executor, _volume_task, items, self.threshold)):
            for members, (ex, dist) in zip(batch, decided):
                exemplar[members] = members[ex]
                distance[members] = dist
        return exemplar, distance


class HashGlobal:
    """Near-duplicates across the whole corpus: LSH candidates verified by exact Hamming, connected groups."""

    COST_S = 2e-5  # CPU-seconds per sample (measured order of magnitude), for `executor: auto`

    def __init__(self, hash_name: str = "dhash", threshold: int = 6, lsh_recall: float = 0.995, lsh_seed: int = 0,
                 groups: str = "star", verify: Optional[str] = None) -> None:
        if groups not in GROUPINGS:
            raise ValueError(f"groups must be one of {', '.join(GROUPINGS)}, got {groups!r}")
        self.hash_name, self.threshold, self.recall, self.seed = hash_name, threshold, lsh_recall, lsh_seed
        self.groups, self.verify = groups, verify
        self.verify_hashes, self.verify_limit = parse_verify(verify) if verify else ((), 0)

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "HashGlobal":
        """The strategy with the options of `cfg`."""
        return cls(hash_name=cfg.hash, threshold=cfg.threshold, lsh_recall=cfg.lsh_recall, lsh_seed=cfg.lsh_seed,
                   groups=cfg.groups, verify=cfg.verify)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        check = f" verify {self.verify.replace(' ', '')}" if self.verify else ""
        return f"hash-global {self.hash_name}<={self.threshold}{check} {self.groups}"

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        extra = corpus.extra if self.verify else np.zeros((len(corpus), 0), np.uint64)
        if extra is None or extra.shape != (len(corpus), len(self.verify_hashes)):
            raise ValueError(f"verify rule {self.verify!r} needs the hashes {self.verify_hashes} in corpus.extra")
        # equal hash rows are duplicates at distance 0: search among distinct rows, each stood for by its first row
        rows = np.concatenate([corpus.hashes[:, None], extra], axis=1)
        unique, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        plan = plan_lsh(len(unique), self.threshold, self.recall, seed=self.seed)
        pairs = merge_pairs(ordered_map(executor, _table_task, list(range(plan.tables)),
                                        np.ascontiguousarray(unique[:, 0]), plan))
        pairs = verified(pairs, unique[:, 1:], self.verify_limit)
        value_exemplar = GROUPINGS[self.groups](len(unique), pairs, rank=first)
        exemplar = first[value_exemplar[inverse.reshape(-1)]]
        distance = np.bitwise_count(corpus.hashes ^ corpus.hashes[exemplar]).astype(np.float32)
        return exemplar, distance


class VolumeOverlap:
    """The same scan in two sources: a volume whose quantised-dHash set is contained (>= `containment`) in a volume
    with more slices (or as many and an earlier key) is a copy; its slices become duplicates of that volume's
    nearest slices. MinHash + datasketch's LSH Ensemble find the candidates (`medscale/dedup/overlap.py`)."""

    COST_S = 3e-5  # CPU-seconds per sample (measured order of magnitude), for `executor: auto`
    VOLUMES_PER_TASK = 1024

    def __init__(self, hash_name: str = "dhash", containment: float = 0.25, num_perm: int = 128) -> None:
        self.hash_name, self.containment, self.num_perm = hash_name, containment, num_perm

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "VolumeOverlap":
        """The strategy with the options of `cfg`."""
        return cls(hash_name=cfg.hash, containment=cfg.containment, num_perm=cfg.num_perm)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        return f"volume-overlap {self.hash_name} containment>={self.containment:g}"

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        members = corpus.volume_groups()
        sets = volume_sets(corpus.hashes, members)
        batches = [sets[i:i + self.VOLUMES_PER_TASK] for i in range(0, len(sets), self.VOLUMES_PER_TASK)]
        sigs = np.concatenate(list(ordered_map(executor, set_signatures, batches, self.num_perm))) if sets else \
            np.zeros((0, self.num_perm), np.uint32)
        pairs = contained_pairs(sets, sigs, self.containment)
        first_key = [str(corpus.keys[m].min()) for m in members]
        priority = np.array(sorted(range(len(members)), key=lambda v: (-len(members[v]), first_key[v])), np.int64)
        exemplar, distance, _ = overlap_decisions(corpus.hashes, members, priority, pairs)
        return exemplar, distance


def _band_task(band: int, sigs: np.ndarray, rows: int) -> np.ndarray:
    return band_pairs(sigs, band, rows)


class MinhashGlobal:
    """Near-copies that global hashes miss (shifted by whole pixels, re-encoded): images as sets of local codes
    (`medscale.hashing.shingles`), MinHash, candidates from LSH bands, kept when the estimated Jaccard similarity is
    at least `jaccard`, then grouped. The index is datasketch's `MinHashLSH` in this process up to
    `IN_MEMORY` images, numpy band tables (a task per band) beyond, or as `index` says; both give the same
    candidates."""

    COST_S = 2e-5  # CPU-seconds per sample for the search (the signatures are counted apart), for `executor: auto`
    NEEDS = ("signatures",)  # the service computes `corpus.signatures` before `reduce`
    IN_MEMORY = 200_000
    INDEXES = ("auto", "datasketch", "bands")

    def __init__(self, jaccard: float = 0.4, num_perm: int = 128, groups: str = "star", index: str = "auto") -> None:
        if groups not in GROUPINGS:
            raise ValueError(f"groups must be one of {', '.join(GROUPINGS)}, got {groups!r}")
        if index not in self.INDEXES:
            raise ValueError(f"index must be one of {', '.join(self.INDEXES)}, got {index!r}")
        self.jaccard, self.num_perm, self.groups, self.index = jaccard, num_perm, groups, index

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "MinhashGlobal":
        """The strategy with the options of `cfg`."""
        return cls(jaccard=cfg.jaccard, num_perm=cfg.num_perm, groups=cfg.groups, index=cfg.minhash_index)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        return f"minhash-global jaccard>={self.jaccard:g} {self.groups}"

    def candidates(self, sigs: np.ndarray, executor) -> np.ndarray:
        """`[P, 2]` pairs (i < j) sharing a band."""
        bands, rows = lsh_params(self.jaccard, sigs.shape[1])
        if self.index == "datasketch" or (self.index == "auto" and len(sigs) <= self.IN_MEMORY):
            from datasketch import MinHashLSH

            lsh = MinHashLSH(num_perm=sigs.shape[1], params=(bands, rows))
            minhashes = [lean(sig) for sig in sigs]
            with lsh.insertion_session() as session:
                for i, m in enumerate(minhashes):
                    session.insert(i, m)
            found = [(i, j) for i, m in enumerate(minhashes) for j in lsh.query(m) if j > i]
            return merge_band_pairs([np.array(found, np.int64).reshape(-1, 2)])
        return merge_band_pairs(list(ordered_map(executor, _band_task, list(range(bands)), sigs, rows)))

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        if corpus.signatures is None:
            raise ValueError("the minhash-global strategy needs the images' signatures (corpus.signatures)")
        sigs = corpus.signatures
        exemplar = np.arange(len(sigs))
        # an image without local codes (blank, flat, tiny) has the empty set's signature: nobody's copy
        coded = np.flatnonzero((sigs != EMPTY).any(axis=1))
        # equal signatures are copies at similarity 1: search among distinct rows, each stood for by its first image
        first, inverse = distinct_rows(sigs if len(coded) == len(sigs) else sigs[coded])
        first = coded[first]  # rows of `sigs` from here
        unique = sigs[first]
        pairs = self.candidates(unique, executor)
        similarity = jaccard(unique[pairs[:, 0]], unique[pairs[:, 1]]) if len(pairs) else np.zeros(0)
        keep = similarity >= self.jaccard
        pairs = np.concatenate([pairs[keep], np.rint(100 * (1 - similarity[keep]))[:, None].astype(np.int64)], 1)
        value_exemplar = GROUPINGS[self.groups](len(unique), pairs, rank=first)
        exemplar[coded] = first[value_exemplar[inverse]]
        distance = (1 - jaccard(sigs, sigs[exemplar])).astype(np.float32)
        return exemplar, distance


class EveryN:
    """Keep slices 0, n, 2n... of each volume (the baseline of the Less-is-More paper); 2D images stay."""

    COST_S = 1e-6  # CPU-seconds per sample (measured order of magnitude), for `executor: auto`

    def __init__(self, every_n: int = 2) -> None:
        self.n = every_n

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "EveryN":
        """The strategy with the options of `cfg`."""
        return cls(every_n=cfg.every_n)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        return f"every-n n={self.n}"

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        exemplar = np.arange(len(corpus))
        for members in corpus.volume_groups():
            exemplar[members] = members[every_n(len(members), self.n)]
        return exemplar, np.zeros(len(corpus), np.float32)


class Embedding:
    """SemDeDup: spherical k-means on embeddings, then cosine similarity > 1 - eps inside a cluster."""

    COST_S = 2e-4  # CPU-seconds per sample (measured order of magnitude), for `executor: auto`
    NEEDS = ("embeddings",)  # the service reads or computes `corpus.embeddings` before `reduce`

    def __init__(self, eps: float = 0.05, clusters: int = 0, seed: int = 0) -> None:
        self.eps, self.clusters, self.seed = eps, clusters, seed

    @classmethod
    def from_config(cls, cfg: "DedupConfig") -> "Embedding":
        """The strategy with the options of `cfg`."""
        return cls(eps=cfg.eps, clusters=cfg.clusters, seed=cfg.lsh_seed)

    def describe(self) -> str:
        """The strategy and its parameters, as recorded in the manifest."""
        return f"embedding cos>{1 - self.eps:.4g}"

    def reduce(self, corpus: Corpus, executor) -> Decisions:
        """The decisions for `corpus` (see the class docstring), fanned out on `executor`."""
        if corpus.embeddings is None:
            raise ValueError("the embedding strategy needs embeddings (dedup.embeddings)")
        x = normalize(corpus.embeddings)
        k = self.clusters or max(1, int(round(np.sqrt(len(x)))))
        centroids, assign = spherical_kmeans(x, k, seed=self.seed)
        clusters = [np.flatnonzero(assign == c) for c in np.unique(assign)]
        items = [(x[m], centroids[assign[m[0]]]) for m in clusters]
        exemplar, distance = np.arange(len(x)), np.zeros(len(x), np.float32)
        for members, (ex, dist) in zip(clusters, ordered_map(executor, _cluster_task, items, self.eps)):
            exemplar[members] = members[ex]
            distance[members] = dist
        return exemplar, distance


STRATEGIES = Registry("strategy", "medscale.strategies", {
    "hash-volume": HashVolume, "hash-global": HashGlobal, "every-n": EveryN, "embedding": Embedding,
    "volume-overlap": VolumeOverlap, "minhash-global": MinhashGlobal})
register_strategy = STRATEGIES.register


def create_strategy(name: str, **params: object):
    """The strategy registered as `name`, built with its own parameters; an unknown name or parameter is a
    ValueError naming the choices."""
    accepted = list(inspect.signature(STRATEGIES.load(name)).parameters)
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise ValueError(f"strategy {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}")
    return STRATEGIES[name](**params)


def strategy_from_config(cfg: "DedupConfig"):
    """The strategy `cfg.strategy` names, with its options read off `cfg`."""
    return STRATEGIES.load(cfg.strategy).from_config(cfg)
