"""prepare_data and cluster_data on toy features."""

import json

import numpy as np
import pytest

from src.data_utility import cluster_data, compute_class_centers, load_parts, prepare_data

from conftest import toy_config


def test_prepare_data_first_identities_in_order(tmp_path):
    config = toy_config(tmp_path, n_classes=5)
    data = prepare_data(config)
    assert data.identities == [f"id_{i:04d}" for i in range(5)]
    assert data.x_train.shape == (40, 16)
    assert data.x_val.shape == (15, 16)
    assert data.x_test.shape == (15, 16)
    assert data.x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(data.y_train), [8] * 5)
    np.testing.assert_array_equal(np.bincount(data.y_test), [3] * 5)
    np.testing.assert_allclose(data.class_centers[2], data.x_train[data.y_train == 2].mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("store", ["packed", "files"])
def test_query_limits_draw_seeded_subsets(tmp_path, store):
    full = prepare_data(toy_config(tmp_path, n_classes=5, feature_store=store))
    limited = prepare_data(toy_config(tmp_path, n_classes=5, feature_store=store, max_val_queries=4,
                                      max_test_queries=6))
    assert len(limited.y_val) == 4
    assert len(limited.y_test) == 6
    assert len(limited.y_train) == len(full.y_train)
    # Each kept query is one of the split's rows, with its own label, in row order.
    rows = [int(np.flatnonzero((full.x_test == row).all(axis=1))[0]) for row in limited.x_test]
    assert rows == sorted(rows)
    assert len(set(rows)) == 6
    np.testing.assert_array_equal(full.y_test[rows], limited.y_test)
    again = prepare_data(toy_config(tmp_path, n_classes=5, feature_store=store, max_test_queries=6))
    np.testing.assert_array_equal(again.x_test, limited.x_test)
    other = prepare_data(toy_config(tmp_path, n_classes=5, feature_store=store, max_test_queries=6, seed=1))
    assert not np.array_equal(other.x_test, limited.x_test)
    # A limit at or above the split's size keeps every query.
    assert len(prepare_data(toy_config(tmp_path, n_classes=5, max_test_queries=15)).y_test) == 15


def test_class_centers_need_every_class():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training samples"):
        compute_class_centers(np.ones((2, 3), np.float32), np.array([0, 2]), 3)


def check_partition(parts, n_classes, n_parts):
    assert len(parts) == n_parts
    assert all(len(part) > 0 for part in parts)
    everything = np.concatenate(parts)
    assert len(everything) == n_classes
    np.testing.assert_array_equal(np.sort(everything), np.arange(n_classes))


@pytest.mark.parametrize("method, distance", [("MMS", "cosine"), ("MMS", "euclidean"), ("ISM", "cosine")])
def test_partition_covers_classes_once(tmp_path, method, distance):
    config = toy_config(tmp_path, method=method, distance_measure=distance)
    data = prepare_data(config)
    parts = cluster_data(data, config, tmp_path / "parts.json")
    check_partition(parts, 12, 3)
    saved = load_parts(tmp_path / "parts.json")
    for part, loaded in zip(parts, saved):
        np.testing.assert_array_equal(part, loaded)
    record = json.loads((tmp_path / "parts.json").read_text())
    assert record[0]["identities"] == [data.identities[i] for i in parts[0]]


def test_single_is_one_part(tmp_path):
    config = toy_config(tmp_path, method="Single")
    parts = cluster_data(prepare_data(config), config)
    check_partition(parts, 12, 1)


def test_ism_sizes_balanced_and_seeded(tmp_path):
    config = toy_config(tmp_path, method="ISM", n_clusters=5)
    data = prepare_data(config)
    parts = cluster_data(data, config)
    assert sorted(len(part) for part in parts) == [2, 2, 2, 3, 3]
    again = cluster_data(data, config)
    other = cluster_data(data, toy_config(tmp_path, method="ISM", n_clusters=5, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_mms_recovers_planted_groups(tmp_path, distance):
    # Toy identities i, i+3, i+6, ... share a group center.
    config = toy_config(tmp_path, method="MMS", distance_measure=distance)
    parts = cluster_data(prepare_data(config), config)
    groups = sorted(sorted(set((part % 3).tolist())) for part in parts)
    assert groups == [[0], [1], [2]]


def test_mms_deterministic_for_seed(tmp_path):
    config = toy_config(tmp_path, method="MMS", n_clusters=4)
    data = prepare_data(config)
    first = cluster_data(data, config)
    second = cluster_data(data, config)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_mms_no_empty_part_on_duplicate_centers(tmp_path):
    config = toy_config(tmp_path, method="MMS", n_clusters=4)
    data = prepare_data(config)
    # Only two distinct centers among 12 classes, yet four parts are requested.
    data.class_centers = np.repeat(np.eye(2, 16, dtype=np.float32), 6, axis=0)
    parts = cluster_data(data, config)
    check_partition(parts, 12, 4)
