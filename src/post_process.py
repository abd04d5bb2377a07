"""Combination of submodel answers: max-max (ISM, Single) and the MMS rule.

All scores and similarities here are mapped to [0, 1] before they are compared or multiplied:
a cosine s becomes (s + 1) / 2, and a euclidean distance d becomes 1 / (1 + d).

For each query, ``compute_scores`` gathers in query blocks (memory stays bounded at any number
of classes, with no Python loop per sample):

- max-max: each submodel's top class and score; the answer is the top class of the submodel
  whose top score is highest;
- similarity: the class whose center is nearest to the query over all classes, the similarity to
  it, and that class's score in its own submodel;
- the query's similarity to the max-max class's center.

``MMSCombiner`` then keeps the max-max answer when its score exceeds a confidence threshold;
below it, the similarity answer wins when
``mixing_factor * similarity * similarity_class_score > maxmax_score * maxmax_class_similarity``.
Both values are fitted on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data_utility import l2_normalize

# Query block size is chosen so that one block of scores (every submodel's classes plus every
# class center) holds about this many float32 values...
_BLOCK_ELEMENTS = 1 << 24
# ...but a block has at least this many queries, because each product streams its whole matrix
# from memory and few queries per block leave it memory-bound. Against 360,000 centers on 2
# idle cores, blocks of 23 queries ran at 61 GFLOP/s and blocks of 184 at 164 GFLOP/s
# (benchmarks/scoring_blocks.py). One product then holds up to 256 x (its rows) values.
_MIN_BLOCK_QUERIES = 256


def _queries_per_block(columns: int) -> int:
    """Return the default number of queries scored at once against ``columns`` scores per query."""
    return max(_MIN_BLOCK_QUERIES, _BLOCK_ELEMENTS // max(columns, 1))
# Fraction of the wrong max-max answers on the validation split allowed above the confidence
# threshold.
WRONG_ABOVE_THRESHOLD = 0.01


@dataclass
class SubmodelBank:
    """The normalized class weights of every submodel, and the global classes of each part."""

    weights: list[np.ndarray]
    parts: list[np.ndarray]

    def __post_init__(self):
        for k, (w, part) in enumerate(zip(self.weights, self.parts)):
            if len(w) != len(part):
                raise ValueError(f"submodel {k} has {len(w)} class weights for a part of {len(part)} classes")
        self.n_classes = int(sum(len(part) for part in self.parts))
        # Weights in global class order, to score any class in its own submodel with one gather.
        self.global_weights = np.empty((self.n_classes, self.weights[0].shape[1]), dtype=np.float32)
        for w, part in zip(self.weights, self.parts):
            self.global_weights[part] = w

    @classmethod
    def load(cls, paths, parts) -> "SubmodelBank":
        """Read the class weights of saved submodels (loaded with Keras safe mode)."""
        from .arcface import load_submodel

        weights = []
        for path in paths:
            model = load_submodel(path)
            weights.append(model.get_layer("cosine").normalized_weights())
        return cls(weights=weights, parts=[np.asarray(p) for p in parts])


@dataclass
class QueryScores:
    """Per-query answers of max-max and of nearest class center, with scores in [0, 1]."""

    part_top_scores: np.ndarray  # (n_queries, n_parts)
    part_top_classes: np.ndarray  # (n_queries, n_parts), global class indices
    maxmax_score: np.ndarray
    maxmax_class: np.ndarray
    # The four center fields are None when compute_scores ran without class centers.
    similarity: np.ndarray | None  # similarity to the nearest class center
    similarity_class: np.ndarray | None
    similarity_class_score: np.ndarray | None  # score of similarity_class in its own submodel
    maxmax_class_similarity: np.ndarray | None  # similarity of the query to the max-max class's center

    def __len__(self) -> int:
        return len(self.maxmax_class)


def cosine_to_unit(cosine: np.ndarray) -> np.ndarray:
    """Map cosines from [-1, 1] to [0, 1]."""
    return (np.clip(cosine, -1.0, 1.0) + 1.0) / 2.0


def distance_to_unit(distance: np.ndarray) -> np.ndarray:
    """Map euclidean distances from [0, inf) to similarities in (0, 1]."""
    return 1.0 / (1.0 + np.maximum(distance, 0.0))


class Top1:
    """Top-1 row of a fixed (rows, dim) matrix for blocks of queries: argmax and max of ``queries @ matrix.T``."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        products = queries @ self.matrix.T
        best = np.argmax(products, axis=1)
        return best, products[np.arange(len(best)), best]


class CenterIndex:
    """Nearest class center search, cosine or euclidean, in bounded query blocks."""

    def __init__(self, class_centers: np.ndarray, distance: str = "cosine"):
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"invalid distance {distance!r}: expected 'cosine' or 'euclidean'")
        self.distance = distance
        centers = np.asarray(class_centers, dtype=np.float32)
        self.centers = l2_normalize(centers) if distance == "cosine" else centers
        self.squared_norms = np.einsum("ij,ij->i", self.centers, self.centers)
        self._top1 = Top1(self.centers) if distance == "cosine" else None

    def nearest(self, queries: np.ndarray):
        """Return the nearest center's class and the similarity in [0, 1] for each query."""
        if self.distance == "cosine":
            best, cosines = self._top1(queries)
            return best, cosine_to_unit(cosines)
        products = queries @ self.centers.T
        query_norms = np.einsum("ij,ij->i", queries, queries)
        squared = query_norms[:, None] + self.squared_norms[None, :] - 2.0 * products
        best = np.argmin(squared, axis=1)
        return best, distance_to_unit(np.sqrt(np.maximum(squared[np.arange(len(best)), best], 0.0)))

    def similarity_to(self, queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Return the similarity in [0, 1] of each query to the center of its given class."""
        centers = self.centers[classes]
        if self.distance == "cosine":
            return cosine_to_unit(np.einsum("ij,ij->i", queries, centers))
        return distance_to_unit(np.linalg.norm(queries - centers, axis=1))


def compute_scores(bank: SubmodelBank, class_centers: np.ndarray | None, queries: np.ndarray,
                   distance: str = "cosine", block_size: int | None = None) -> QueryScores:
    """Score every query against every submodel and, unless ``class_centers`` is None, every class center.

    Queries are normalized and converted to float32 one block at a time, so ``queries`` may be a
    float16 array or a memory map and only one block of scores is held at once. Without class
    centers (max-max alone, as ISM and Single need) the four center fields of the result are None
    and the cost halves when the centers are as many as the classes.
    """
    index = CenterIndex(class_centers, distance) if class_centers is not None else None
    n_queries, n_parts = len(queries), len(bank.parts)
    if block_size is None:
        columns = bank.n_classes + (len(index.centers) if index is not None else 0)
        block_size = _queries_per_block(columns)

    part_scores = np.empty((n_queries, n_parts), dtype=np.float32)
    part_classes = np.empty((n_queries, n_parts), dtype=np.int64)
    scorers = [Top1(w) for w in bank.weights]
    if index is not None:
        similarity = np.empty(n_queries, dtype=np.float32)
        similarity_class = np.empty(n_queries, dtype=np.int64)
        own_scores = np.empty(n_queries, dtype=np.float32)
        maxmax_class_similarity = np.empty(n_queries, dtype=np.float32)
    for start in range(0, n_queries, block_size):
        block = slice(start, start + block_size)
        x = l2_normalize(np.asarray(queries[block], dtype=np.float32))
        rows = np.arange(len(x))
        for k, (scorer, part) in enumerate(zip(scorers, bank.parts)):
            best, part_scores[block, k] = scorer(x)
            part_classes[block, k] = part[best]
        if index is None:
            continue
        similarity_class[block], similarity[block] = index.nearest(x)
        own_scores[block] = np.einsum("ij,ij->i", x, bank.global_weights[similarity_class[block]])
        block_winner = np.argmax(cosine_to_unit(part_scores[block]), axis=1)
        maxmax_class_similarity[block] = index.similarity_to(x, part_classes[block][rows, block_winner])

    part_scores = cosine_to_unit(part_scores)
    winner = np.argmax(part_scores, axis=1)
    rows = np.arange(n_queries)
    return QueryScores(
        part_top_scores=part_scores,
        part_top_classes=part_classes,
        maxmax_score=part_scores[rows, winner],
        maxmax_class=part_classes[rows, winner],
        similarity=similarity if index is not None else None,
        similarity_class=similarity_class if index is not None else None,
        similarity_class_score=cosine_to_unit(own_scores) if index is not None else None,
        maxmax_class_similarity=maxmax_class_similarity if index is not None else None,
    )


def nearest_centers(class_centers: np.ndarray, queries: np.ndarray, distance: str = "cosine",
                    block_size: int | None = None) -> np.ndarray:
    """Return the class of the nearest class center for each query, in bounded query blocks."""
    index = CenterIndex(class_centers, distance)
    if block_size is None:
        block_size = _queries_per_block(len(index.centers))
    classes = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block_size):
        block = slice(start, start + block_size)
        classes[block] = index.nearest(l2_normalize(np.asarray(queries[block], dtype=np.float32)))[0]
    return classes


def max_max(scores: QueryScores) -> np.ndarray:
    """Return the max-max answer: the top class of the submodel with the highest top score."""
    return scores.maxmax_class


def nearest_class_center(scores: QueryScores) -> np.ndarray:
    """Return the class of the nearest class center."""
    return scores.similarity_class


def confidence_threshold(maxmax_scores: np.ndarray, maxmax_correct: np.ndarray,
                         wrong_fraction: float = WRONG_ABOVE_THRESHOLD) -> float:
    """Return the lowest score above which fewer than ``wrong_fraction`` of wrong answers remain.

    With W wrong answers sorted by descending score w_1 >= w_2 >= ..., at most
    a = ceil(wrong_fraction * W) - 1 of them may lie strictly above the threshold, so the
    threshold is w_(a+1). With no wrong answer, it is 0, the lowest possible score.
    """
    wrong = np.sort(np.asarray(maxmax_scores)[~np.asarray(maxmax_correct, dtype=bool)])[::-1]
    if len(wrong) == 0:
        return 0.0
    allowed = math.ceil(wrong_fraction * len(wrong)) - 1
    return float(wrong[allowed])


class MMSCombiner:
    """The MMS decision rule, with its confidence threshold and mixing factor fitted on labels.

    Fitted attributes: ``confidence_threshold_`` (a max-max score in [0, 1]) and
    ``mixing_factor_`` (0 never takes the similarity answer; ``inf`` always takes it below the
    threshold), and ``validation_accuracy_``.
    """

    def __init__(self, wrong_fraction: float = WRONG_ABOVE_THRESHOLD):
        if not 0.0 < wrong_fraction <= 1.0:
            raise ValueError(f"invalid wrong_fraction={wrong_fraction!r}: expected a value in (0, 1]")
        self.wrong_fraction = wrong_fraction

    @staticmethod
    def _contest(scores: QueryScores):
        """Return each query's similarity side A and max-max side B of the rule."""
        similarity_side = scores.similarity * scores.similarity_class_score
        maxmax_side = scores.maxmax_score * scores.maxmax_class_similarity
        return similarity_side, maxmax_side

    def fit(self, scores: QueryScores, labels: np.ndarray) -> "MMSCombiner":
        """Fit the threshold and then the mixing factor that maximizes accuracy on ``labels``."""
        labels = np.asarray(labels)
        if len(labels) != len(scores):
            raise ValueError(f"{len(labels)} labels for {len(scores)} scored queries")
        maxmax_correct = scores.maxmax_class == labels
        self.confidence_threshold_ = confidence_threshold(scores.maxmax_score, maxmax_correct, self.wrong_fraction)

        # Only uncertain queries whose two answers differ can change; each switches to the
        # similarity answer once mixing_factor exceeds its ratio B / A.
        similarity_side, maxmax_side = self._contest(scores)
        contested = (scores.maxmax_score <= self.confidence_threshold_) & (scores.similarity_class != scores.maxmax_class)
        contested &= similarity_side > 0
        ratios = maxmax_side[contested] / similarity_side[contested]
        gains = (scores.similarity_class[contested] == labels[contested]).astype(np.int64) - maxmax_correct[contested]

        order = np.argsort(ratios, kind="stable")
        ratios, gains = ratios[order], gains[order]
        unique_ratios, first = np.unique(ratios, return_index=True)
        # Accuracy gain when every query with ratio <= unique_ratios[j] switches.
        cumulative = np.cumsum(gains)
        last_of_group = np.append(first[1:], len(ratios)) - 1
        totals = np.concatenate([[0], cumulative[last_of_group]]) if len(ratios) else np.zeros(1, dtype=np.int64)
        best = int(np.argmax(totals))  # first maximum: the fewest switches among equals
        if best == 0:
            self.mixing_factor_ = 0.0
        elif best == len(unique_ratios):
            self.mixing_factor_ = math.inf
        else:
            self.mixing_factor_ = float((unique_ratios[best - 1] + unique_ratios[best]) / 2.0)
        self.validation_accuracy_ = float((maxmax_correct.sum() + totals[best]) / max(len(labels), 1))
        return self

    def predict(self, scores: QueryScores) -> np.ndarray:
        """Return the MMS answer for each query."""
        if not hasattr(self, "mixing_factor_"):
            raise RuntimeError("MMSCombiner is not fitted; call fit() on validation scores first")
        similarity_side, maxmax_side = self._contest(scores)
        if math.isinf(self.mixing_factor_):
            prefer_similarity = similarity_side > 0
        else:
            prefer_similarity = self.mixing_factor_ * similarity_side > maxmax_side
        uncertain = scores.maxmax_score <= self.confidence_threshold_
        return np.where(uncertain & prefer_similarity, scores.similarity_class, scores.maxmax_class)
