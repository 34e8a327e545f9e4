"""AUC from score-ordered (pos, neg) masses: histogram (bounded memory) and exact (tie-averaged).

docs/MATH.md §10.2–10.3. Both modes reduce to one formula over groups sorted by ascending score,
`AUC = [Σ_g pos_g·N_{<g} + ½ Σ_g pos_g·neg_g] / (P·N)`: a group is a histogram bin (bounded mode,
with the certified bound `½ Σ_g pos_g·neg_g / (P·N)`) or one distinct score (exact mode, bound 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MANTISSA_BITS = 10  # docs/MATH.md §10.3: 127·2^10 + 1 = 130,049 bins, relative width ≤ 2^-10
_FLOAT32_MANTISSA_BITS = 23


def num_bins(mantissa_bits: int) -> int:
    """Bins covering every float32 in [0, 1]: 127 exponents below 1.0 times 2^k mantissa steps, plus 1.0."""
    return 127 * (1 << mantissa_bits) + 1


def histogram_keys(scores: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """Monotone bin index of each score in [0, 1] (docs/MATH.md §10.3).

    scores: [n] float (float64 is rounded to float32 first; rounding is monotone, so bins stay
    ordered in the original score). Returns [n] int32 in [0, num_bins(k)).
    The float32 bit pattern of a non-negative number is increasing in the number, so dropping the
    low mantissa bits gives bins ordered by score with relative width ≤ 2^-k.
    """
    # + 0.0 turns -0.0 (sign bit set, huge key) into +0.0.
    as_f32 = np.asarray(scores, dtype=np.float32) + np.float32(0.0)
    return as_f32.view(np.int32) >> (_FLOAT32_MANTISSA_BITS - mantissa_bits)


def bin_midpoints(mantissa_bits: int) -> np.ndarray:
    """[num_bins] float64: the middle of each bin's score range (the last bin holds exactly 1.0)."""
    shift = _FLOAT32_MANTISSA_BITS - mantissa_bits
    lower = (np.arange(num_bins(mantissa_bits) + 1, dtype=np.int64) << shift).astype(np.int32).view(np.float32)
    mid = (lower[:-1].astype(np.float64) + lower[1:].astype(np.float64)) / 2
    mid[-1] = 1.0
    return mid


@dataclass(frozen=True)
class AucValue:
    """auc and error_bound are None exactly when null_reason says why."""

    auc: float | None
    error_bound: float | None
    null_reason: str | None = None


def tie_averaged_auc(pos: np.ndarray, neg: np.ndarray) -> AucValue:
    """AUC of groups in ascending score order, pairs inside a group counted as ½.

    pos, neg: [G] float64 positive / negative mass per group. error_bound is the certified bound
    `½ Σ pos_g·neg_g / (P·N)` (only meaningful when a group can hold distinct scores).
    """
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if total_pos <= 0:
        return AucValue(None, None, "no positive mass (POS = 0)")
    if total_neg <= 0:
        return AucValue(None, None, "no negative mass (NEG = 0)")
    neg_below = np.cumsum(neg) - neg
    half_ties = 0.5 * float(np.dot(pos, neg))
    pairs = total_pos * total_neg
    return AucValue((float(np.dot(pos, neg_below)) + half_ties) / pairs, half_ties / pairs)


def roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) [G+1] each, from (0, 0) to (1, 1), lowering the threshold group by group.

    pos, neg: [G] masses in ascending score order; needs P > 0 and N > 0.
    """
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1])]) / pos.sum()
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1])]) / neg.sum()
    return fpr, tpr


class ExactScoreCounts:
    """Exact-mode AUC state: a sparse map score -> (pos, neg), merged by key-wise addition.

    Keyed on the float64 score (docs/MATH.md §10.2 allows the float32 bit pattern; float64 keeps
    float64 predictions exact too) [project]. Memory is O(distinct scores): for validation and
    modest sizes. Batches are buffered and folded into the sorted map when the buffer outgrows it,
    so the amortised cost is O(n log n).
    """

    def __init__(self) -> None:
        self.scores = np.zeros(0, dtype=np.float64)  # sorted, unique
        self.pos = np.zeros(0, dtype=np.float64)
        self.neg = np.zeros(0, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        """scores, pos, neg: [n] float64 (pos = w·y, neg = w·(1−y) per row)."""
        # + 0.0 folds -0.0 into +0.0 so that they are one key; copies, since the caller may reuse its buffers.
        self._pending.append((scores + 0.0, np.array(pos, dtype=np.float64), np.array(neg, dtype=np.float64)))
        self._pending_rows += len(scores)
        if self._pending_rows > max(len(self.scores), 1 << 20):
            self._fold()

    def merge_(self, other: "ExactScoreCounts") -> None:
        other._fold()
        self.add(other.scores, other.pos, other.neg)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, pos, neg) [U] each, scores sorted and unique."""
        self._fold()
        return self.scores, self.pos, self.neg

    def set_arrays(self, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        """Replace the map by key-wise sums of (scores, pos, neg) (keys may repeat, any order)."""
        self.scores = self.pos = self.neg = np.zeros(0, dtype=np.float64)
        self._pending = [(np.asarray(scores, np.float64) + 0.0, np.asarray(pos, np.float64),
                          np.asarray(neg, np.float64))]
        self._pending_rows = len(scores)
        self._fold()

    def auc(self) -> AucValue:
        scores, pos, neg = self.arrays()
        value = tie_averaged_auc(pos, neg)
        return value if value.auc is None else AucValue(value.auc, 0.0)

    def _fold(self) -> None:
        if not self._pending:
            return
        parts = [(self.scores, self.pos, self.neg)] + self._pending
        scores, pos, neg = (np.concatenate(column) for column in zip(*parts))
        self.scores, inverse = np.unique(scores, return_inverse=True)
        self.pos = np.bincount(inverse, weights=pos, minlength=len(self.scores))
        self.neg = np.bincount(inverse, weights=neg, minlength=len(self.scores))
        self._pending, self._pending_rows = [], 0


def grouped_auc(groups: np.ndarray, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact tie-averaged AUC of every group at once (for GAUC), without a per-group Python loop.

    groups: [n] int in [0, num_groups); scores, pos, neg: [n] float64.
    Returns (auc, defined, mass), each [num_groups]: auc float64 (0 where not defined), defined
    bool (the group has positive and negative mass), mass float64 (the group's pos + neg).
    """
    order = np.lexsort((scores, groups))
    g, s, p, q = groups[order], scores[order], pos[order], neg[order]
    # One "tie" per distinct (group, score): the tie-averaged formula runs over these.
    new_tie = np.ones(len(g), dtype=bool)
    new_tie[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    tie = np.cumsum(new_tie) - 1
    tie_group = g[new_tie]
    tie_pos = np.bincount(tie, weights=p)
    tie_neg = np.bincount(tie, weights=q)
    group_pos = np.bincount(tie_group, weights=tie_pos, minlength=num_groups)
    group_neg = np.bincount(tie_group, weights=tie_neg, minlength=num_groups)
    # Negative mass strictly below each tie within its group: global exclusive cumsum minus the
    # cumsum at the group's start.
    exclusive = np.cumsum(tie_neg) - tie_neg
    group_start = np.concatenate([[0.0], np.cumsum(group_neg)[:-1]])
    neg_below = exclusive - group_start[tie_group]
    numerator = np.bincount(tie_group, weights=tie_pos * (neg_below + 0.5 * tie_neg), minlength=num_groups)
    defined = (group_pos > 0) & (group_neg > 0)
    auc = np.divide(numerator, group_pos * group_neg, out=np.zeros(num_groups), where=defined)
    return auc, defined, group_pos + group_neg
