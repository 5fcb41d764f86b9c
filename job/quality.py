"""How good the model is and how far new trips are from its training: one computation,
shared by ``train`` (the evaluation records kept with a model version) and ``infer`` (the
live error and drift of each input), from which the summary, the metrics and the report
all derive.

Everything is a streaming accumulator over the numpy batches :mod:`job.reading` yields:
memory depends on the zones and the fixed bins below, never on the rows, and the result is
exact (counts are counts; sums are float sums of the rows, the same whatever a batch's
size). Histograms have fixed edges, so records of different versions and inputs line up;
a value beyond the outer edges is counted in the outer bin (``np.clip`` first), so every
histogram's counts add up to its rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from job.model import DENSE_SPAN, Model, PairStats

#: The proportion a zone gets on the side of a PSI where it has no row: without a floor the
#: index is infinite as soon as one new zone appears (a common choice, small enough not to
#: matter when the zone is absent on both sides... which it never is: bins are the union).
PSI_FLOOR = 1e-6

#: Rows worked on at a time: the temporaries of a slice stay in the CPU's cache (scoring
#: a batch of predicted rows in slices takes half the time).
SLICE_ROWS = 1 << 14

#: Predicted minutes, 1-minute bins from 0 to 60: predicted-duration histograms.
PREDICTED_EDGES: tuple[float, ...] = tuple(float(m) for m in range(0, 61))
#: Residuals (actual - predicted) in minutes, 1-minute bins from -60 to 60.
RESIDUAL_EDGES: tuple[float, ...] = tuple(float(m) for m in range(-60, 61))
#: Predicted and actual minutes of the predicted-vs-actual 2-D histogram, 2-minute bins.
GRID_EDGES: tuple[float, ...] = tuple(float(m) for m in range(0, 62, 2))


def bounds_us(low: float, high: float) -> tuple[int, int]:
    """The whole microseconds ``d`` with ``low <= d / 60e6 <= high``, as ``[first, last]``:
    the filter then compares integers, exactly as the seed's float ``between()`` does."""
    first = math.ceil(low * 60e6) - 2
    while first / 60e6 < low:
        first += 1
    last = math.floor(high * 60e6) + 2
    while last / 60e6 > high:
        last -= 1
    return first, last


@functools.cache
def _grid(edges: tuple[float, ...]) -> tuple[float, float] | None:
    """``(scale, first)`` when ``edges`` are ``first * w, (first + 1) * w, ...`` for a power
    of two ``w`` and a whole ``first``, with ``scale = 1 / w``: then ``floor(x * scale)``
    is exact (scaling by a power of two loses nothing) and is the bin, offset by
    ``first``. None for other edges."""
    width = edges[1] - edges[0]
    mantissa, _ = math.frexp(width)
    first = edges[0] / width
    if width <= 0 or mantissa != 0.5 or first != math.floor(first):
        return None
    if any(e != (first + k) * width for k, e in enumerate(edges)):
        return None
    return 1 / width, first


def bins(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """The bin of each value, as ``np.histogram(np.clip(values, edges[0], edges[-1]), edges)``
    counts it: bins closed on the left, the last one on both sides."""
    last = len(edges) - 2
    grid = _grid(edges)
    if grid is None:
        edge = np.asarray(edges, dtype=np.float64)
        found = np.searchsorted(edge, np.clip(values, edge[0], edge[-1]), side="right")
        index: np.ndarray = np.minimum(found - 1, last)
        return index
    # Five cheap passes instead of a binary search per value (a third of the time).
    scale, first = grid
    scaled = values * scale if scale != 1 else values
    cell = np.floor(scaled)
    np.clip(cell, first, first + last, out=cell)
    cell -= first
    return cell.astype(np.intp)


def histogram(
    values: np.ndarray, edges: tuple[float, ...], weights: np.ndarray | None = None
) -> np.ndarray:
    """Counts (or summed ``weights``) of ``values`` in the bins of ``edges``, outer bins
    open-ended."""
    return np.bincount(bins(values, edges), weights=weights, minlength=len(edges) - 1)


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float | None:
    """Population stability index of ``actual`` against ``expected`` (counts per bin):
    sum over the union of bins of ``(a - e) * ln(a / e)`` with ``a``, ``e`` the proportions,
    natural log, a bin absent (or empty) on one side at :data:`PSI_FLOOR`. None when
    either side has no row."""
    e_total = float(sum(expected.values()))
    a_total = float(sum(actual.values()))
    if e_total <= 0 or a_total <= 0:
        return None
    keys = sorted(set(expected) | set(actual))
    e = np.array([expected.get(k, 0.0) for k in keys], dtype=np.float64) / e_total
    a = np.array([actual.get(k, 0.0) for k in keys], dtype=np.float64) / a_total
    e = np.where(e > 0, e, PSI_FLOOR)
    a = np.where(a > 0, a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class ZoneSums:
    """Per zone id: a row count and ``width - 1`` float sums, streamed. Ids from -1 (null)
    to ``DENSE_SPAN - 2`` go to a dense table (TLC zones are 1..265), others to a dict."""

    width: int = 1
    _dense: np.ndarray = field(init=False)
    _sparse: dict[int, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._dense = np.zeros((self.width, DENSE_SPAN))

    def add(self, ids: np.ndarray, *weights: np.ndarray) -> None:
        """Count ``ids`` and add each of ``weights`` (one value per id) to their sums."""
        if ids.size == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < -1 or high > DENSE_SPAN - 2:
            inside = (ids >= -1) & (ids <= DENSE_SPAN - 2)
            keys, inverse = np.unique(ids[~inside], return_inverse=True)
            columns = [np.bincount(inverse)]
            columns += [np.bincount(inverse, weights=w[~inside]) for w in weights]
            for k, key in enumerate(keys.tolist()):
                slot = self._sparse.setdefault(key, np.zeros(self.width))
                slot += [c[k] for c in columns]
            ids = ids[inside]
            weights = tuple(w[inside] for w in weights)
            if ids.size == 0:
                return
            high = int(ids.max())
        code = ids + 1
        size = high + 2
        self._dense[0, :size] += np.bincount(code, minlength=size)
        for row, w in enumerate(weights, start=1):
            self._dense[row, :size] += np.bincount(code, weights=w, minlength=size)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add row counts of the ids -1, 0, 1, ... (``counts[id + 1]``)."""
        self._dense[0, : counts.size] += counts

    def merge(self, other: ZoneSums) -> None:
        self._dense += other._dense
        for key, values in other._sparse.items():
            self._sparse.setdefault(key, np.zeros(self.width))[:] += values

    def items(self) -> list[tuple[int, np.ndarray]]:
        """``(zone, [rows, sums...])`` of every zone with a row, by zone id."""
        found = [(int(z) - 1, self._dense[:, z]) for z in np.flatnonzero(self._dense[0])]
        found += [(k, v) for k, v in self._sparse.items() if v[0] > 0]
        return sorted(found, key=lambda item: item[0])

    def counts(self) -> dict[str, int]:
        """``{"<zone>": rows}`` (null as "-1"), the keys of the model's vocabulary."""
        return {str(zone): int(values[0]) for zone, values in self.items()}


def _counts(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.rint(values)]


def _histogram_record(counts: np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
    return {"edges": list(edges), "counts": _counts(counts)}


# -- train: what a model version records about its training and evaluation rows --------


def training_mix(stats: PairStats) -> dict[str, dict[str, int]]:
    """The pickup and drop-off zone mixes of the rows summarised by ``stats``."""
    mix = {}
    for side, ids in (("pickup", stats.pu), ("dropoff", stats.do)):
        zones, inverse = np.unique(ids, return_inverse=True)
        rows = np.bincount(inverse.ravel(), weights=stats.n, minlength=zones.size)
        mix[side] = {str(int(z)): int(round(r)) for z, r in zip(zones, rows, strict=True) if r}
    return mix


def predicted_histogram(model: Model, stats: PairStats) -> dict[str, Any]:
    """The model's predicted minutes on the rows summarised by ``stats`` (one prediction per
    zone pair, weighted by its rows: the same counts as predicting every row)."""
    predicted = model.predict(stats.pu, stats.do)
    return _histogram_record(histogram(predicted, PREDICTED_EDGES, stats.n), PREDICTED_EDGES)


@dataclass
class EvaluationRecords:
    """A model's errors on its evaluation rows: what needs each row (the residual histogram
    and the predicted-vs-actual grid) streamed, the rest from the rows' pair statistics
    (:meth:`record`)."""

    model: Model
    rows: int = 0
    residuals: np.ndarray = field(
        default_factory=lambda: np.zeros(len(RESIDUAL_EDGES) - 1, dtype=np.int64)
    )
    grid: np.ndarray = field(
        default_factory=lambda: np.zeros((len(GRID_EDGES) - 1, len(GRID_EDGES) - 1), dtype=np.int64)
    )

    def add(self, predicted: np.ndarray, actual: np.ndarray) -> None:
        """Add kept rows: the model's predicted and their actual minutes."""
        cells = len(GRID_EDGES) - 1
        self.rows += int(predicted.size)
        for start in range(0, predicted.size, SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            self.residuals += np.bincount(
                bins(actual[part] - predicted[part], RESIDUAL_EDGES),
                minlength=len(RESIDUAL_EDGES) - 1,
            )
            code = bins(predicted[part], GRID_EDGES) * cells
            code += bins(actual[part], GRID_EDGES)
            self.grid += np.bincount(code, minlength=cells * cells).reshape(cells, cells)

    def merge(self, other: EvaluationRecords) -> None:
        self.rows += other.rows
        self.residuals += other.residuals
        self.grid += other.grid

    def record(self, stats: PairStats) -> dict[str, Any]:
        """The ``evaluation_records`` of a model's metadata (plain JSON), with ``stats`` the
        pair statistics of the same rows. A prediction is one per zone pair, so per zone
        the squared errors and residuals add up from the pairs' sums exactly as from the
        rows (up to rounding): ``sse = q - 2ps + np²``, ``residual_sum = s - np``."""
        predicted = self.model.predict(stats.pu, stats.do)
        sse = np.maximum(stats.q - 2 * predicted * stats.s + stats.n * predicted * predicted, 0)
        residual = stats.s - stats.n * predicted
        zones: dict[str, dict[str, dict[str, Any]]] = {}
        for side, ids in (("pickup", stats.pu), ("dropoff", stats.do)):
            keys, inverse = np.unique(ids, return_inverse=True)
            inverse = inverse.ravel()
            sums = [np.bincount(inverse, weights=w) for w in (stats.n, sse, residual)]
            zones[side] = {
                str(int(zone)): {
                    "rows": int(round(sums[0][k])),
                    "sse": float(sums[1][k]),
                    "residual_sum": float(sums[2][k]),
                }
                for k, zone in enumerate(keys)
                if sums[0][k] > 0
            }
        return {
            "rows": self.rows,
            "residual_histogram": _histogram_record(self.residuals, RESIDUAL_EDGES),
            "predicted_vs_actual": {
                "predicted_edges": list(GRID_EDGES),
                "actual_edges": list(GRID_EDGES),
                "counts": [_counts(row) for row in self.grid],
            },
            "zones": zones,
            "predicted_histogram": predicted_histogram(self.model, stats),
        }


# -- infer: the live error and drift of the inputs a run predicts ----------------------


@dataclass
class Live:
    """What one input (or a whole run) tells about the model: rows predicted and their
    predicted minutes and zone mixes; on the rows with both times set and a duration within
    ``bounds`` (the model's training filter, :func:`training_bounds`), their count and
    squared errors. With a ``model``, :meth:`predict` predicts rows and adds them."""

    bounds: tuple[int, int] | None = None
    model: Model | None = field(default=None, repr=False, compare=False)
    rows: int = 0
    predicted_sum: float = 0.0
    rows_scored: int = 0
    sse: float = 0.0
    pickup: ZoneSums = field(default_factory=ZoneSums)
    """Rows per pickup zone (see :attr:`pairs`)."""
    dropoff: ZoneSums = field(default_factory=ZoneSums)
    pairs: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Rows per (pickup, drop-off) pair at ``(pu + 1) * DENSE_SPAN + (do + 1)`` not yet
    added to :attr:`pickup` and :attr:`dropoff`: :meth:`finish` does (2 MiB each)."""
    _table: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def predict(
        self,
        pu: np.ndarray,
        do: np.ndarray,
        pickup_us: np.ndarray | None = None,
        dropoff_us: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """The model's predictions of these rows, which are added; with their times
        (``valid``: where both are set, None when all are) when the input has drop-off
        times, to score them."""
        assert self.model is not None
        predicted: np.ndarray
        pu1, do1 = pu + 1, do + 1
        if pu.size and int((pu1 | do1).view(np.uint64).max()) < DENSE_SPAN:
            # Zone ids from -1 to DENSE_SPAN - 2 (TLC's): one pair code per row both predicts
            # (a lookup in the model's pair table) and counts the zone mixes (one bincount):
            # half the work of predicting and counting each side.
            if self._table is None:
                self._table = self.model.pair_table(DENSE_SPAN)
            code = pu1
            code *= DENSE_SPAN
            code += do1
            predicted = self._table[code]
            counts = np.bincount(code)
            if self.pairs is None:
                self.pairs = np.zeros(DENSE_SPAN * DENSE_SPAN, dtype=np.int64)
            self.pairs[: counts.size] += counts
        else:
            predicted = self.model.predict(pu, do)
            self.pickup.add(pu)
            self.dropoff.add(do)
        self.rows += int(pu.size)
        self.predicted_sum += float(predicted.sum())
        if pickup_us is not None and dropoff_us is not None and self.bounds is not None:
            self._score(predicted, pickup_us, dropoff_us, valid, self.bounds)
        return predicted

    def _score(
        self,
        predicted: np.ndarray,
        pickup_us: np.ndarray,
        dropoff_us: np.ndarray,
        valid: np.ndarray | None,
        bounds: tuple[int, int],
    ) -> None:
        for start in range(0, predicted.size, SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            duration = dropoff_us[part] - pickup_us[part]
            keep = scored(duration, None if valid is None else valid[part], bounds)
            residual = duration / 60e6
            residual -= predicted[part]
            # Zeros where a row is not scored, rather than a masked copy: a zero adds
            # nothing to the sum of squares, exactly. (einsum, not ``@``: a BLAS dot
            # wakes BLAS threads that spin, costing more CPU than the whole scoring.)
            residual *= keep
            self.rows_scored += int(np.count_nonzero(keep))
            self.sse += float(np.einsum("i,i->", residual, residual))

    def finish(self) -> Live:
        """Add the pair counts to the zone mixes and let the pair table go (an infer run
        keeps each input's figures); return self."""
        if self.pairs is not None:
            table = self.pairs.reshape(DENSE_SPAN, DENSE_SPAN)
            self.pickup.add_counts(table.sum(axis=1))
            self.dropoff.add_counts(table.sum(axis=0))
            self.pairs = None
        self._table = None
        return self

    def merge(self, other: Live) -> None:
        self.rows += other.rows
        self.predicted_sum += other.predicted_sum
        self.rows_scored += other.rows_scored
        self.sse += other.sse
        other.finish()
        self.pickup.merge(other.pickup)
        self.dropoff.merge(other.dropoff)

    def fields(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The summary's quality fields for these rows, against the model's ``metadata``
        (its ``training_mix``; a model trained before it was recorded gets no PSI)."""
        mix = metadata.get("training_mix")
        pickup = dropoff = None
        if isinstance(mix, dict) and self.rows:
            self.finish()
            pickup = psi(mix.get("pickup") or {}, self.pickup.counts())
            dropoff = psi(mix.get("dropoff") or {}, self.dropoff.counts())
        return {
            "rows_scored": self.rows_scored,
            "rmse_live": math.sqrt(self.sse / self.rows_scored) if self.rows_scored else None,
            "psi_pickup": pickup,
            "psi_dropoff": dropoff,
            "mean_predicted_duration": self.predicted_sum / self.rows if self.rows else None,
        }


def training_bounds(metadata: Mapping[str, Any]) -> tuple[int, int] | None:
    """The model's training filter in whole microseconds, None when it recorded none."""
    low, high = metadata.get("min_duration"), metadata.get("max_duration")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return None
    return bounds_us(float(low), float(high))


def scored(
    duration_us: np.ndarray, valid: np.ndarray | None, bounds: tuple[int, int]
) -> np.ndarray:
    """Which rows the training filter keeps: both times set, duration within ``bounds``."""
    first, last = bounds
    # One unsigned comparison for first <= d <= last (both ends inclusive): what lies below
    # ``first`` wraps around to a huge unsigned number.
    keep = (duration_us - first).view(np.uint64) <= np.uint64(last - first)
    if valid is not None:
        keep &= valid
    return keep
