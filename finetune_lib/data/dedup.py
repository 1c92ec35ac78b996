"""Duplicates: exact, normalized (case, whitespace, punctuation) and near (character n-gram MinHash).

Pure functions over lists of records; ``DatasetBuilder.deduplicate`` and ``Splits.leakage`` use them.

Example:
    >>> recs = [{"text": "Great phone!", "label": 1}, {"text": "great  phone", "label": 0},
    ...         {"text": "great phone", "label": 1}]
    >>> kept, counts = deduplicate(recs)
    >>> kept, counts["normalized"], counts["label_conflicts"]
    ([{'text': 'Great phone!', 'label': 1}], 2, 1)
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .records import record_key

__all__ = ["LeakageReport", "deduplicate", "find_leakage", "leaked_indices", "minhash_signatures",
           "near_duplicate_pairs", "normalize_for_dedup"]

_MASK64 = (1 << 64) - 1


def normalize_for_dedup(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols removed, whitespace collapsed.

    >>> normalize_for_dedup("  The  Phone, isn't GREAT!! ")
    'the phone isnt great'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.translate(_punctuation_and_symbols()).split())


@functools.cache
def _punctuation_and_symbols() -> dict[int, None]:
    """A ``str.translate`` table deleting every code point of Unicode category P* or S* (built once)."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PS"}


# --------------------------------------------------------------------------- MinHash (numpy)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (wrapping arithmetic on uint64 arrays)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _shingles(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every character n-gram of every text, concatenated, and each text's start offset.

    A text shorter than ``n`` contributes one shingle (itself).
    """
    codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) for t in texts]
    counts = np.array([max(len(c) - n + 1, 1) for c in codes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    hashes = np.empty(int(counts.sum()), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c, start, count in zip(codes, offsets, counts, strict=True):
            if len(c) < n:
                c = np.concatenate([c, np.zeros(n - len(c), dtype=np.uint64)])
            h = np.zeros(int(count), dtype=np.uint64)
            for j in range(n):  # polynomial hash of each window, then mixed
                h = h * np.uint64(1_000_003) + c[j : j + count]
            hashes[start : start + count] = _splitmix64(h)
    return hashes, offsets


def minhash_signatures(texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 0
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
    """MinHash signatures ``(len(texts), num_perm)`` of character n-gram sets, and each text's shingle set.

    Each "permutation" is a multiply-xorshift hash of the 64-bit shingle hash; the signature keeps
    its minimum, so the fraction of equal entries estimates the Jaccard similarity of the sets.
    """
    hashes, offsets = _shingles(texts, ngram)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    sig = np.empty((len(texts), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(num_perm):
            permuted = hashes * a[k] + b[k]
            permuted ^= permuted >> np.uint64(29)
            sig[:, k] = np.minimum.reduceat(permuted, offsets)
    bounds = [*offsets[1:], len(hashes)]
    sets = [np.unique(hashes[s:e]) for s, e in zip(offsets, bounds, strict=True)]
    return sig, sets


def _bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """Largest rows-per-band ``r`` (fewest candidates) that still finds a pair at ``threshold``
    with probability >= 0.995."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        if num_perm % r:
            continue
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= 0.995:
            best = (b, r)
    return best


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.9, ngram: int = 5, num_perm: int = 128,
                         seed: int = 0) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)`` with ``i < j`` whose character n-gram Jaccard similarity >= ``threshold``.

    Candidates come from MinHash LSH banding; each is verified with the exact Jaccard of the
    shingle sets, so there are no false positives. About a second for 10k short texts.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if len(texts) < 2:
        return []
    sig, sets = minhash_signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed)
    bands, rows = _bands_for(threshold, num_perm)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        ends = np.cumsum(counts)
        for bucket in np.flatnonzero(counts > 1):
            members = np.sort(order[ends[bucket] - counts[bucket] : ends[bucket]])
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((int(members[x]), int(members[y])))
    if not candidates:
        return []
    cand = np.array(sorted(candidates), dtype=np.int64)
    # cheap filter on the signature estimate (its standard error is < 0.045 at 128 permutations)
    estimate = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1)
    cand = cand[estimate >= threshold - 0.2]
    pairs = []
    for i, j in cand.tolist():
        inter = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        jaccard = inter / (len(sets[i]) + len(sets[j]) - inter)
        if jaccard >= threshold:
            pairs.append((i, j, jaccard))
    return pairs


# --------------------------------------------------------------------------- deduplication


class _Clusters:
    """Union-find over record indices; the root is always the smallest (first) index."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> bool:
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return False
        self.parent[max(ri, rj)] = min(ri, rj)
        return True


def _merge_by_key(clusters: _Clusters, keys: Sequence[str], indices: Sequence[int]) -> int:
    """Merge records with equal keys among ``indices`` (cluster roots); returns how many merged."""
    first: dict[str, int] = {}
    merged = 0
    for i in indices:
        j = first.setdefault(keys[i], i)
        if j != i and clusters.union(j, i):
            merged += 1
    return merged


def _roots(clusters: _Clusters, n: int) -> list[int]:
    return [i for i in range(n) if clusters.find(i) == i]


def deduplicate(records: Sequence[dict[str, Any]], normalized: bool = True, near: bool = False,
                threshold: float = 0.9, ngram: int = 5) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Remove duplicate records; returns the kept records (first occurrences, in order) and counts.

    Records are compared on ``text`` (or ``prompt`` + ``target``). Stages: exact, then normalized
    (see :func:`normalize_for_dedup`) when ``normalized``, then near duplicates (character
    ``ngram`` Jaccard >= ``threshold``) when ``near``. A kept record whose duplicates carry other
    labels gets the majority label of its group (ties: the earliest label); each such group counts
    once in ``label_conflicts``.

    Returns:
        ``(kept, {"exact": n, "normalized": n, "near": n, "label_conflicts": n})``, where each
        stage count is the number of records it removed.
    """
    n = len(records)
    keys = [record_key(r) for r in records]
    clusters = _Clusters(n)
    counts = {"exact": _merge_by_key(clusters, keys, range(n)), "normalized": 0, "near": 0}
    if normalized:
        norm = [normalize_for_dedup(k) for k in keys]
        counts["normalized"] = _merge_by_key(clusters, norm, _roots(clusters, n))
    if near:
        roots = _roots(clusters, n)
        texts = [normalize_for_dedup(keys[i]) for i in roots]
        for a, b, _ in near_duplicate_pairs(texts, threshold=threshold, ngram=ngram):
            counts["near"] += clusters.union(roots[a], roots[b])
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[clusters.find(i)].append(i)
    kept: list[dict[str, Any]] = []
    conflicts = 0
    for root in sorted(members):
        record = records[root]
        labels = [records[i].get("label") for i in members[root] if records[i].get("label") is not None]
        keys = [_label_key(label) for label in labels]  # a multi-label list compares as its set
        if len(set(keys)) > 1:
            conflicts += 1
            tally = Counter(keys)
            top = max(tally.values())
            majority = next(label for label, key in zip(labels, keys) if tally[key] == top)  # earliest among the tied
            if majority != record.get("label"):
                record = {**record, "label": majority}
        kept.append(record)
    counts["label_conflicts"] = conflicts
    return kept, counts


def _label_key(label: Any) -> Any:
    """A hashable form of a label: a multi-label list as the sorted set of its names."""
    if isinstance(label, (list, tuple, set)):
        return tuple(sorted({str(v) for v in label}))
    return label


# --------------------------------------------------------------------------- leakage between splits


@dataclass
class LeakageReport:
    """Records of a later split that duplicate records of an earlier one (train < validation < test).

    ``pairs["train/test"] == {"exact": 3, "normalized": 1, "near": 0, "examples": [...]}`` counts the
    test records whose text also appears in train (exactly, after normalization, or as a near
    duplicate when checked); ``examples`` holds up to a few of their texts.
    """

    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Leaked records over all pairs and kinds."""
        return sum(p["exact"] + p["normalized"] + p.get("near", 0) for p in self.pairs.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def to_dict(self) -> dict[str, Any]:
        return {name: dict(p) for name, p in self.pairs.items()}

    def __str__(self) -> str:
        if not self:
            return "no leakage between splits"
        lines = ["leakage between splits:"]
        for name, p in self.pairs.items():
            n = p["exact"] + p["normalized"] + p.get("near", 0)
            if n:
                kinds = ", ".join(f"{k} {p[k]}" for k in ("exact", "normalized", "near") if p.get(k))
                lines.append(f"  {name}: {n} ({kinds}); e.g. {p['examples'][:2]}")
        return "\n".join(lines)


def leaked_indices(parts: Mapping[str, Sequence[dict[str, Any]]], near: bool = False, threshold: float = 0.9
                   ) -> dict[tuple[str, str], dict[int, str]]:
    """For each ordered pair of splits (earlier, later): ``{index in later: kind}`` of its leaked records.

    A record counts once per pair, with the strongest kind: ``exact``, then ``normalized``, then ``near``.
    """
    names = list(parts)
    keys = {name: [record_key(r) for r in parts[name]] for name in names}
    norms = {name: [normalize_for_dedup(k) for k in keys[name]] for name in names}
    near_hits: dict[tuple[str, str], set[int]] = defaultdict(set)
    if near:
        owner = [(name, i) for name in names for i in range(len(keys[name]))]
        flat = [norms[name][i] for name, i in owner]
        for a, b, _ in near_duplicate_pairs(flat, threshold=threshold):
            (na, ia), (nb, ib) = owner[a], owner[b]
            if na != nb:
                early, late, li = (na, nb, ib) if names.index(na) < names.index(nb) else (nb, na, ia)
                near_hits[(early, late)].add(li)
    out: dict[tuple[str, str], dict[int, str]] = {}
    for x, early in enumerate(names):
        exact_set, norm_set = set(keys[early]), set(norms[early])
        for late in names[x + 1 :]:
            found: dict[int, str] = {}
            for i, (k, nk) in enumerate(zip(keys[late], norms[late], strict=True)):
                if k in exact_set:
                    found[i] = "exact"
                elif nk in norm_set:
                    found[i] = "normalized"
                elif i in near_hits[(early, late)]:
                    found[i] = "near"
            out[(early, late)] = found
    return out


def find_leakage(parts: Mapping[str, Sequence[dict[str, Any]]], near: bool = False, threshold: float = 0.9,
                 max_examples: int = 3) -> LeakageReport:
    """A :class:`LeakageReport` over the named splits, in the order given (train first)."""
    return leakage_report(parts, leaked_indices(parts, near=near, threshold=threshold), max_examples)


def leakage_report(parts: Mapping[str, Any], leaked: Mapping[tuple[str, str], Mapping[int, str]],
                   max_examples: int = 3) -> LeakageReport:
    """The report of `leaked` (``{(early, late): {index in late: "exact" | "normalized" | "near"}}``), with
    up to `max_examples` leaked records of each later split shown."""
    report = LeakageReport()
    for (early, late), found in leaked.items():
        kinds = Counter(found.values())
        report.pairs[f"{early}/{late}"] = {
            "exact": kinds["exact"], "normalized": kinds["normalized"], "near": kinds["near"],
            "examples": [record_key(parts[late][i]) for i in list(found)[:max_examples]],
        }
    return report
