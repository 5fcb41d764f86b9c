"""The model is the exact least-squares solution, in scikit-learn's gauge."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from trips import random_trips

from job.model import PairAccumulator, _components, fit, rmse, to_sklearn


def dicts(pu: np.ndarray, do: np.ndarray) -> list[dict[str, str]]:
    """The seed notebook's encoding: zones as strings, for DictVectorizer."""
    return [{"PULocationID": str(a), "DOLocationID": str(b)} for a, b in zip(pu, do, strict=True)]


def dense_reference(
    pu: np.ndarray, do: np.ndarray, y: np.ndarray
) -> tuple[DictVectorizer, LinearRegression]:
    vectorizer = DictVectorizer()
    x = vectorizer.fit_transform(dicts(pu, do)).toarray()
    return vectorizer, LinearRegression().fit(x, y)  # dense: an exact, minimum-norm lstsq


def fitted(pu: np.ndarray, do: np.ndarray, y: np.ndarray, batches: int = 3):
    acc = PairAccumulator()
    for part in np.array_split(np.arange(y.size), batches):
        acc.add(pu[part], do[part], y[part])
    return fit(acc.result()), acc.result()


@pytest.fixture
def trips() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pu, do, minutes = random_trips(4000, seed=3, zones=40)
    keep = (minutes >= 1) & (minutes <= 60)
    pu, do, minutes = pu[keep], do[keep], minutes[keep]
    pu[:7] = -1  # null pickups, as the seed's fillna(-1)
    # A group of zones never linked to the rest: the design loses one more rank.
    pu = np.concatenate([pu, [500, 500, 502, 502]])
    do = np.concatenate([do, [501, 501, 503, 501]])
    minutes = np.concatenate([minutes, [10.0, 12.0, 7.0, 9.5]])
    return pu, do, minutes


def test_predictions_equal_a_dense_exact_solve(trips):
    pu, do, y = trips
    model, _ = fitted(pu, do, y)
    vectorizer, reference = dense_reference(pu, do, y)
    ours = model.predict(pu, do)
    theirs = reference.predict(vectorizer.transform(dicts(pu, do)).toarray())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_unseen_zones_follow_the_same_gauge(trips):
    """An unseen pickup zone gets intercept + drop-off weight, exactly as scikit-learn."""
    pu, do, y = trips
    model, _ = fitted(pu, do, y)
    vectorizer, reference = dense_reference(pu, do, y)
    new_pu = np.array([999, 1, 999, -1, 500, 70000])
    new_do = np.array([3, 888, 888, 2, 501, -1])
    theirs = reference.predict(vectorizer.transform(dicts(new_pu, new_do)).toarray())
    np.testing.assert_allclose(model.predict(new_pu, new_do), theirs, rtol=0, atol=1e-9)
    assert model.predict(np.array([999]), np.array([888]))[0] == pytest.approx(model.intercept)


def test_weights_and_intercept_equal_scikit_learns(trips):
    pu, do, y = trips
    model, _ = fitted(pu, do, y)
    vectorizer, reference = dense_reference(pu, do, y)
    ours_vectorizer, ours = to_sklearn(model)
    assert ours_vectorizer.feature_names_ == list(vectorizer.feature_names_)
    np.testing.assert_allclose(ours.coef_, reference.coef_, rtol=0, atol=1e-9)
    assert ours.intercept_ == pytest.approx(reference.intercept_, abs=1e-9)
    assert model.features == len(vectorizer.feature_names_)


def test_exported_objects_predict_like_the_model(trips):
    pu, do, y = trips
    model, _ = fitted(pu, do, y)
    vectorizer, regression = to_sklearn(model)
    ours = regression.predict(vectorizer.transform(dicts(pu[:50], do[:50])))
    np.testing.assert_allclose(ours, model.predict(pu[:50], do[:50]), atol=1e-9)


def test_rmse_from_sufficient_statistics_equals_the_direct_one(trips):
    pu, do, y = trips
    model, stats = fitted(pu, do, y)
    direct = np.sqrt(np.mean((model.predict(pu, do) - y) ** 2))
    assert rmse(model, stats) == pytest.approx(direct, rel=1e-10)


def test_batching_does_not_change_the_fit(trips):
    pu, do, y = trips
    one, _ = fitted(pu, do, y, batches=1)
    many, _ = fitted(pu, do, y, batches=17)
    np.testing.assert_allclose(one.predict(pu, do), many.predict(pu, do), atol=1e-10)


def test_zone_ids_outside_the_dense_table_are_handled(trips):
    pu, do, y = trips
    shifted_pu, shifted_do = pu * 1_000_003, do * 7_919  # far beyond 1023, ranks unchanged
    model, _ = fitted(shifted_pu, shifted_do, y)
    vectorizer, reference = dense_reference(shifted_pu, shifted_do, y)
    theirs = reference.predict(vectorizer.transform(dicts(shifted_pu, shifted_do)).toarray())
    np.testing.assert_allclose(model.predict(shifted_pu, shifted_do), theirs, atol=1e-9)


def test_sklearn_sparse_path_is_not_exact_but_we_are():
    """Why we do not call LinearRegression on the sparse matrix: lsqr stops early."""
    pu, do, y = random_trips(20000, seed=11, zones=120)
    keep = (y >= 1) & (y <= 60)
    pu, do, y = pu[keep], do[keep], y[keep]
    model, _ = fitted(pu, do, y)
    vectorizer, reference = dense_reference(pu, do, y)
    x = vectorizer.transform(dicts(pu, do))
    exact = reference.predict(x.toarray())
    ours = model.predict(pu, do)
    assert np.abs(ours - exact).max() < 1e-8
    sparse = LinearRegression().fit(x, y).predict(x)
    assert np.abs(sparse - exact).max() > np.abs(ours - exact).max()


def test_fit_without_rows_is_refused():
    with pytest.raises(ValueError, match="no rows"):
        fit(PairAccumulator().result())


@pytest.mark.parametrize("seed", range(6))
def test_zone_groups_are_scipys_connected_components(seed):
    """The fit's own connected components (kept so that `train` does not pay scipy's import,
    about 0.25 s of CPU) partition the zones exactly as scipy's do, on sparse random graphs
    with many groups and on dense ones with one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(seed)
    p, d = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    edges = int(rng.integers(1, 3 * (p + d)))
    pi, di = rng.integers(0, p, edges), rng.integers(0, d, edges)
    labels = _components(pi, di, p, d)
    graph = coo_matrix((np.ones(edges), (pi, di + p)), shape=(p + d, p + d))
    count, expected = connected_components(graph, directed=False)
    # The same partition: a one-to-one map between the two labellings.
    pairs = set(zip(labels.tolist(), expected.tolist(), strict=True))
    assert len(pairs) == count == len(set(labels.tolist()))
