"""The duration model: one-hot pickup and drop-off zones plus an intercept, fit by least squares.

Every training row has exactly one pickup and one drop-off zone, so the normal equations
depend on the data only through per-(pickup, drop-off) counts, sums and sums of squares:
training streams rows into those (memory grows with the number of zone pairs, never with
rows) and then solves a small dense system exactly.

The solution is the one scikit-learn's ``LinearRegression`` gives on dense data: the
minimum-norm least-squares solution of the centred problem, intercept = mean(y) -
mean(X)·w. The one-hot design is rank-deficient (each block sums to one, and more so when
zone pairs split into disconnected groups); its null space is known exactly from the
zone-pair graph, so we solve ``(G + a·P) w = b`` with ``P`` the projector onto that null
space: non-singular, and its solution is the minimum-norm one. No tolerance, no early
stop (scikit-learn's sparse path stops lsqr at 1e-6 and is minutes off for rare pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Zone ids in [-1, DENSE_SPAN - 2] are accumulated in a dense table (fast, and small enough
#: to stay in cache: TLC zones are 1..265); other ids sparsely.
DENSE_SPAN = 512


@dataclass(frozen=True)
class PairStats:
    """Per (pickup zone, drop-off zone) pair: row count, sum and sum of squares of the target."""

    pu: np.ndarray
    do: np.ndarray
    n: np.ndarray
    s: np.ndarray
    q: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.n.sum())


@dataclass
class PairAccumulator:
    """Streams (pu, do, y) batches into :class:`PairStats`."""

    _dense: np.ndarray = field(default_factory=lambda: np.zeros((3, DENSE_SPAN, DENSE_SPAN)))
    _sparse: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def add(
        self, pu: np.ndarray, do: np.ndarray, y: np.ndarray, keep: np.ndarray | None = None
    ) -> None:
        """Add the rows of ``pu`` and ``do`` selected by ``keep`` (all when None); ``y``
        holds the targets of just those rows."""
        lowest = min(int(pu.min(initial=0)), int(do.min(initial=0)))
        pu_max, do_max = int(pu.max(initial=-1)), int(do.max(initial=-1))
        if lowest < -1 or max(pu_max, do_max) > DENSE_SPAN - 2:
            if keep is not None:
                pu, do = pu[keep], do[keep]
            inside = (pu >= -1) & (pu < DENSE_SPAN - 1) & (do >= -1) & (do < DENSE_SPAN - 1)
            self._add_sparse(pu[~inside], do[~inside], y[~inside])
            pu, do, y, keep = pu[inside], do[inside], y[inside], None
            pu_max, do_max = int(pu.max(initial=-1)), int(do.max(initial=-1))
        if pu.size == 0:
            return
        # Count into a table just big enough for this batch's ids (TLC: 267 x 267), then
        # add it to the corner of the dense table: less memory to clear and add per batch.
        rows = pu_max + 2
        cols = do_max + 2
        code = (pu + 1) * cols + (do + 1)
        if keep is not None:
            code = code[keep]
        size = rows * cols
        corner = self._dense[:, :rows, :cols]
        corner[0] += np.bincount(code, minlength=size).reshape(rows, cols)
        corner[1] += np.bincount(code, weights=y, minlength=size).reshape(rows, cols)
        corner[2] += np.bincount(code, weights=y * y, minlength=size).reshape(rows, cols)

    def merge(self, other: PairAccumulator) -> None:
        """Add the rows ``other`` has seen."""
        self._dense += other._dense
        for key, values in other._sparse.items():
            self._sparse.setdefault(key, np.zeros(3))[:] += values

    def add_stats(self, stats: PairStats) -> None:
        """Add the rows another accumulator summarised (a shard's partial statistics)."""
        inside = (stats.pu >= -1) & (stats.pu < DENSE_SPAN - 1)
        inside &= (stats.do >= -1) & (stats.do < DENSE_SPAN - 1)
        # Each pair appears once in ``stats``, so fancy-index addition counts it once.
        for i, values in enumerate((stats.n, stats.s, stats.q)):
            self._dense[i, stats.pu[inside] + 1, stats.do[inside] + 1] += values[inside]
        outside = np.flatnonzero(~inside)
        for k, a, b in zip(outside, stats.pu[outside], stats.do[outside], strict=True):
            self._sparse.setdefault((int(a), int(b)), np.zeros(3))[:] += (
                stats.n[k],
                stats.s[k],
                stats.q[k],
            )

    def _add_sparse(self, pu: np.ndarray, do: np.ndarray, y: np.ndarray) -> None:
        keys, inverse = np.unique(np.stack([pu, do], axis=1), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        n = np.bincount(inverse)
        s = np.bincount(inverse, weights=y)
        q = np.bincount(inverse, weights=y * y)
        for k, (a, b) in enumerate(keys.tolist()):
            self._sparse.setdefault((a, b), np.zeros(3))[:] += (n[k], s[k], q[k])

    def result(self) -> PairStats:
        pu, do = np.nonzero(self._dense[0])
        n, s, q = self._dense[:, pu, do]
        pu, do = pu - 1, do - 1
        if self._sparse:
            keys = np.array(list(self._sparse), dtype=np.int64).reshape(-1, 2)
            values = np.array(list(self._sparse.values())).reshape(-1, 3)
            pu = np.concatenate([pu, keys[:, 0]])
            do = np.concatenate([do, keys[:, 1]])
            n, s, q = (np.concatenate([a, values[:, i]]) for i, a in enumerate((n, s, q)))
        return PairStats(pu.astype(np.int64), do.astype(np.int64), n, s, q)


@dataclass(frozen=True)
class Model:
    """Intercept and one weight per zone seen in training; unseen zones contribute nothing."""

    intercept: float
    pu_ids: np.ndarray  # sorted int64
    pu_weights: np.ndarray
    do_ids: np.ndarray  # sorted int64
    do_weights: np.ndarray

    @property
    def features(self) -> int:
        """The number of one-hot columns."""
        return int(self.pu_ids.size + self.do_ids.size)

    def predict(self, pu: np.ndarray, do: np.ndarray) -> np.ndarray:
        """Predicted durations in minutes for zone id arrays (null zones as -1)."""
        predicted: np.ndarray = (
            self.intercept
            + _lookup(self.pu_ids, self.pu_weights, pu)
            + _lookup(self.do_ids, self.do_weights, do)
        )
        return predicted

    def pair_table(self, span: int) -> np.ndarray:
        """The prediction of every pair of zone ids from -1 to ``span - 2``, flat, at
        ``(pu + 1) * span + (do + 1)``: the same floats as :meth:`predict` (the same
        additions in the same order), one lookup per row instead of one per zone."""
        ids = np.arange(-1, span - 1, dtype=np.int64)
        pickup = self.intercept + _lookup(self.pu_ids, self.pu_weights, ids)
        table: np.ndarray = pickup[:, None] + _lookup(self.do_ids, self.do_weights, ids)[None, :]
        return table.ravel()

    def to_dict(self) -> dict[str, Any]:
        return {
            "intercept": float(self.intercept),
            "pu_ids": self.pu_ids.tolist(),
            "pu_weights": self.pu_weights.tolist(),
            "do_ids": self.do_ids.tolist(),
            "do_weights": self.do_weights.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        model = cls(
            intercept=float(data["intercept"]),
            pu_ids=np.asarray(data["pu_ids"], dtype=np.int64),
            pu_weights=np.asarray(data["pu_weights"], dtype=np.float64),
            do_ids=np.asarray(data["do_ids"], dtype=np.int64),
            do_weights=np.asarray(data["do_weights"], dtype=np.float64),
        )
        if (
            model.pu_ids.shape != model.pu_weights.shape
            or model.do_ids.shape != model.do_weights.shape
        ):
            raise ValueError("zone ids and weights differ in length")
        return model


def _lookup(ids: np.ndarray, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``weights`` at the position of each value in ``ids`` (sorted), 0.0 where absent."""
    if ids.size == 0:
        return np.zeros(values.shape)
    lo, hi = int(ids[0]), int(ids[-1])
    if hi - lo < 1 << 16 and values.size > 4 * (hi - lo):
        # A dense table beats a binary search when the id range is small (TLC: 1..265).
        table = np.zeros(hi - lo + 3)
        table[ids - lo + 1] = weights
        index = np.clip(values - (lo - 1), 0, hi - lo + 2)  # outside the range: a zero slot
        return table[index]  # type: ignore[no-any-return]
    pos = np.searchsorted(ids, values).clip(0, ids.size - 1)
    return np.where(ids[pos] == values, weights[pos], 0.0)


def _components(pi: np.ndarray, di: np.ndarray, p: int, d: int) -> np.ndarray:
    """Connected-component label of each zone node (pickups 0..p-1, drop-offs p..p+d-1)
    in the graph whose edges are the observed zone pairs."""
    parent = np.arange(p + d)
    a, b = pi, di + p
    while True:  # min-label propagation with pointer jumping; converges in a few rounds
        la, lb = parent[a], parent[b]
        low = np.minimum(la, lb)
        before = parent.copy()
        np.minimum.at(parent, la, low)
        np.minimum.at(parent, lb, low)
        parent = parent[parent]
        if np.array_equal(parent, before):
            return parent


def fit(stats: PairStats) -> Model:
    """The exact least-squares model of the rows summarised by ``stats``."""
    if stats.n.size == 0 or stats.rows == 0:
        raise ValueError("no rows to fit")
    pu_ids, pi = np.unique(stats.pu, return_inverse=True)
    do_ids, di = np.unique(stats.do, return_inverse=True)
    p, d = pu_ids.size, do_ids.size
    total = stats.n.sum()
    counts = np.concatenate([np.bincount(pi, stats.n, p), np.bincount(di, stats.n, d)])
    sums = np.concatenate([np.bincount(pi, stats.s, p), np.bincount(di, stats.s, d)])
    mean_y = stats.s.sum() / total

    # Gram matrix of the centred one-hot design, and its right-hand side.
    gram = np.zeros((p + d, p + d))
    gram[np.arange(p + d), np.arange(p + d)] = counts
    gram[pi, di + p] = stats.n
    gram[di + p, pi] = stats.n
    gram -= np.outer(counts, counts) / total
    rhs = sums - counts * mean_y

    # Null space of the centred design: per connected group of zones, +1 on its pickups and
    # -1 on its drop-offs; and +1 on every drop-off zone. Orthonormalise it.
    labels = _components(pi, di, p, d)
    groups = np.unique(labels, return_inverse=True)[1]
    basis = np.zeros((p + d, groups.max() + 2))
    basis[np.arange(p + d), groups] = np.where(np.arange(p + d) < p, 1.0, -1.0)
    basis[p:, -1] = 1.0
    q, _ = np.linalg.qr(basis)

    scale = float(np.mean(np.diag(gram))) or 1.0
    system = gram + scale * (q @ q.T)
    w = np.linalg.solve(system, rhs)
    w += np.linalg.solve(system, rhs - gram @ w)  # one step of iterative refinement
    w -= q @ (q.T @ w)  # in exact arithmetic this is zero already
    intercept = mean_y - counts @ w / total
    return Model(float(intercept), pu_ids, w[:p].copy(), do_ids, w[p:].copy())


def rmse(model: Model, stats: PairStats) -> float:
    """Root-mean-squared error of ``model`` on the rows summarised by ``stats``."""
    pred = model.predict(stats.pu, stats.do)
    rss = np.sum(stats.q - 2 * pred * stats.s + stats.n * pred * pred)
    return float(np.sqrt(max(rss, 0.0) / stats.n.sum()))


def to_sklearn(model: Model) -> tuple[Any, Any]:
    """The model as fitted scikit-learn objects: ``(DictVectorizer, LinearRegression)``.

    They behave like the seed notebook's: feed the vectorizer dicts with the zones as
    strings, ``{"PULocationID": "132", "DOLocationID": "-1"}`` (null as "-1"), then
    ``regression.predict(vectorizer.transform(dicts))``.
    """
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression

    named = {
        f"PULocationID={z}": w for z, w in zip(model.pu_ids.tolist(), model.pu_weights, strict=True)
    }
    named.update(
        {
            f"DOLocationID={z}": w
            for z, w in zip(model.do_ids.tolist(), model.do_weights, strict=True)
        }
    )
    names = sorted(named)  # DictVectorizer's order
    vectorizer = DictVectorizer()
    vectorizer.feature_names_ = names
    vectorizer.vocabulary_ = {name: i for i, name in enumerate(names)}
    regression = LinearRegression()
    regression.coef_ = np.array([named[n] for n in names])
    regression.intercept_ = model.intercept
    regression.n_features_in_ = len(names)
    regression.rank_ = None
    regression.singular_ = None
    return vectorizer, regression
