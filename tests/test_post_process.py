"""ISM and MMS combination: scores against brute force, thresholds and decisions by hand."""

import math

import numpy as np
import pytest

from src.post_process import (
    MMSCombiner,
    QueryScores,
    SubmodelBank,
    compute_scores,
    confidence_threshold,
    cosine_to_unit,
    distance_to_unit,
)


def unit_rows(rng, n, dim):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def bank_and_queries():
    rng = np.random.default_rng(3)
    n_classes, dim = 30, 8
    parts = [np.array([0, 4, 7, 9, 12, 20, 21]), np.arange(1, 4), np.setdiff1d(np.arange(30), [0, 4, 7, 9, 12, 20, 21, 1, 2, 3])]
    weights = unit_rows(rng, n_classes, dim)
    bank = SubmodelBank(weights=[weights[p] for p in parts], parts=parts)
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32) * 0.7
    queries = unit_rows(rng, 50, dim)
    return bank, weights, centers, queries


def hand_scores(maxmax_score, maxmax_class, similarity_class, similarity, similarity_class_score, maxmax_class_similarity):
    n = len(maxmax_score)
    return QueryScores(
        part_top_scores=np.asarray(maxmax_score, float)[:, None],
        part_top_classes=np.asarray(maxmax_class)[:, None],
        maxmax_score=np.asarray(maxmax_score, float),
        maxmax_class=np.asarray(maxmax_class),
        similarity=np.asarray(similarity, float),
        similarity_class=np.asarray(similarity_class),
        similarity_class_score=np.asarray(similarity_class_score, float),
        maxmax_class_similarity=np.asarray(maxmax_class_similarity, float) if n else np.zeros(0),
    )


def test_maxmax_matches_brute_force(bank_and_queries):
    bank, weights, centers, queries = bank_and_queries
    scores = compute_scores(bank, centers, queries, "cosine")
    cosines = queries @ weights.T
    for k, part in enumerate(bank.parts):
        np.testing.assert_allclose(scores.part_top_scores[:, k], cosine_to_unit(cosines[:, part].max(axis=1)), atol=1e-6)
        np.testing.assert_array_equal(scores.part_top_classes[:, k], part[cosines[:, part].argmax(axis=1)])
    # Every class lives in exactly one part, so max-max over parts is the global argmax.
    np.testing.assert_array_equal(scores.maxmax_class, cosines.argmax(axis=1))
    np.testing.assert_allclose(scores.maxmax_score, cosine_to_unit(cosines.max(axis=1)), atol=1e-6)


def test_cosine_similarity_matches_brute_force(bank_and_queries):
    bank, weights, centers, queries = bank_and_queries
    scores = compute_scores(bank, centers, queries, "cosine")
    unit_centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    cosines = queries @ unit_centers.T
    np.testing.assert_array_equal(scores.similarity_class, cosines.argmax(axis=1))
    np.testing.assert_allclose(scores.similarity, cosine_to_unit(cosines.max(axis=1)), atol=1e-6)
    own = np.einsum("ij,ij->i", queries, weights[scores.similarity_class])
    np.testing.assert_allclose(scores.similarity_class_score, cosine_to_unit(own), atol=1e-6)
    to_maxmax = cosines[np.arange(len(queries)), scores.maxmax_class]
    np.testing.assert_allclose(scores.maxmax_class_similarity, cosine_to_unit(to_maxmax), atol=1e-6)


def test_euclidean_similarity_matches_brute_force(bank_and_queries):
    bank, _, centers, queries = bank_and_queries
    scores = compute_scores(bank, centers, queries, "euclidean")
    distances = np.linalg.norm(queries[:, None, :] - centers[None, :, :], axis=2)
    np.testing.assert_array_equal(scores.similarity_class, distances.argmin(axis=1))
    np.testing.assert_allclose(scores.similarity, distance_to_unit(distances.min(axis=1)), atol=1e-5)
    to_maxmax = distances[np.arange(len(queries)), scores.maxmax_class]
    np.testing.assert_allclose(scores.maxmax_class_similarity, 1 / (1 + to_maxmax), atol=1e-5)
    assert ((scores.similarity > 0) & (scores.similarity <= 1)).all()


def test_cosine_and_euclidean_differ_on_uneven_centers():
    # Center 1 points closer to the query but is short; euclidean prefers the long center 0.
    centers = np.array([[1.0, 0.3], [0.2, 0.01]], np.float32)
    bank = SubmodelBank(weights=[np.eye(2, dtype=np.float32)], parts=[np.array([0, 1])])
    query = np.array([[1.0, 0.0]], np.float32)
    assert compute_scores(bank, centers, query, "cosine").similarity_class[0] == 1
    assert compute_scores(bank, centers, query, "euclidean").similarity_class[0] == 0


def test_block_size_does_not_change_scores(bank_and_queries):
    bank, _, centers, queries = bank_and_queries
    whole = compute_scores(bank, centers, queries, "cosine")
    blocked = compute_scores(bank, centers, queries, "cosine", block_size=7)
    for name in ("maxmax_class", "similarity_class", "part_top_classes"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(blocked, name))
    np.testing.assert_allclose(whole.similarity, blocked.similarity, atol=1e-6)


def test_bank_rejects_mismatched_part():
    with pytest.raises(ValueError, match="2 class weights for a part of 3 classes"):
        SubmodelBank(weights=[np.eye(2, 4, dtype=np.float32)], parts=[np.arange(3)])


def test_confidence_threshold_by_hand():
    scores = np.array([0.9, 0.6, 0.5, 0.95, 0.4])
    correct = np.array([False, False, False, True, True])
    # 3 wrong answers: fewer than 0.03 of them may remain above, so none: the top wrong score.
    assert confidence_threshold(scores, correct) == 0.9
    # 250 wrong answers: at most 2 may remain above, so the threshold is the third highest.
    many = np.linspace(0.0, 1.0, 250)
    assert confidence_threshold(many, np.zeros(250, bool)) == pytest.approx(many[-3])
    assert confidence_threshold(scores, np.ones(5, bool)) == 0.0


def validation_case():
    # q0 confident and right; q1 wrong either way; q2 and q4 right only by similarity;
    # q3 right only by max-max; q5 both agree.
    scores = hand_scores(
        maxmax_score=[0.95, 0.90, 0.60, 0.55, 0.50, 0.40],
        maxmax_class=[0, 1, 3, 5, 7, 9],
        similarity_class=[0, 2, 4, 6, 8, 9],
        similarity=[0.9, 0.8, 0.9, 0.9, 0.5, 0.9],
        similarity_class_score=[0.9, 0.5, 0.8, 0.9, 0.5, 0.9],
        maxmax_class_similarity=[0.9, 0.8, 0.6, 0.9, 0.5, 0.9],
    )
    labels = np.array([0, 10, 4, 5, 8, 9])
    return scores, labels


def test_mms_fit_by_hand():
    scores, labels = validation_case()
    combiner = MMSCombiner().fit(scores, labels)
    # Wrong max-max scores are 0.90, 0.60 and 0.50: the threshold is the highest, 0.90.
    assert combiner.confidence_threshold_ == 0.9
    # Ratios B / A of the contested queries: q1 0.72/0.40 = 1.8 (gain 0), q2 0.36/0.72 = 0.5
    # (gain +1), q3 0.495/0.81 = 0.611 (gain -1), q4 0.25/0.25 = 1.0 (gain +1). Switching the
    # queries with ratio <= 0.5 gains 1, as does switching those <= 1.0; the first maximum wins,
    # so the factor lies midway between 0.5 and 0.611.
    assert combiner.mixing_factor_ == pytest.approx((0.5 + 0.495 / 0.81) / 2)
    assert combiner.validation_accuracy_ == pytest.approx(4 / 6)
    np.testing.assert_array_equal(combiner.predict(scores), [0, 1, 4, 5, 7, 9])


def test_mms_predict_by_hand():
    scores, labels = validation_case()
    combiner = MMSCombiner().fit(scores, labels)
    test = hand_scores(
        maxmax_score=[0.95, 0.70, 0.70, 0.90],
        maxmax_class=[1, 1, 1, 1],
        similarity_class=[2, 2, 2, 2],
        similarity=[1.0, 1.0, 1.0, 1.0],
        similarity_class_score=[0.9, 0.6, 0.5, 0.9],
        maxmax_class_similarity=[1.0, 0.3 / 0.7, 0.3 / 0.7, 0.1 / 0.9],
    )
    # q0 is confident; q1: 0.556 * 0.6 = 0.333 > 0.3; q2: 0.556 * 0.5 = 0.278 < 0.3;
    # q3 sits on the threshold, which counts as uncertain, and 0.556 * 0.9 > 0.1.
    np.testing.assert_array_equal(combiner.predict(test), [1, 2, 1, 2])


def test_mms_extremes_never_and_always():
    # Similarity is always wrong here, so the best factor is 0: never switch.
    scores, _ = validation_case()
    never = MMSCombiner().fit(scores, scores.maxmax_class.copy())
    assert never.mixing_factor_ == 0.0
    np.testing.assert_array_equal(never.predict(scores), scores.maxmax_class)
    # Similarity is always right: switch every uncertain query.
    wrong_maxmax = hand_scores([0.5, 0.4, 0.3], [1, 2, 3], [4, 5, 6], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.9, 0.9, 0.9])
    always = MMSCombiner().fit(wrong_maxmax, np.array([4, 5, 6]))
    assert math.isinf(always.mixing_factor_)
    np.testing.assert_array_equal(always.predict(wrong_maxmax), [4, 5, 6])


def test_mms_unfitted_predict_raises():
    scores, _ = validation_case()
    with pytest.raises(RuntimeError, match="not fitted"):
        MMSCombiner().predict(scores)


def test_mms_fit_rejects_label_count():
    scores, labels = validation_case()
    with pytest.raises(ValueError, match="5 labels for 6"):
        MMSCombiner().fit(scores, labels[:5])
