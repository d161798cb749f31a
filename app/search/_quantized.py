"""A compact copy of the embeddings that picks candidates for the exact top k.

Each stored row ``x`` (float32, dimension ``D``) is kept as its unit vector
``u = x / |x|`` (computed in float64) quantized to int8 with a per-row scale:
``s = max|u_j| / 127`` (stored as float32), ``c_j = round(u_j / s)``, and the norm of what
the quantization left out, ``r = |u - s*c|`` (computed in float64 with the stored float32
``s``, stored as float32 rounded up). ``D + 8`` bytes a row instead of ``4 * D``.

A query ``y`` is made a unit vector ``q`` and quantized the same way (``t``, ``e``,
``rho = |q - t*e|``). The approximate score of a row is ``a = s * t * (c . e)``, where
``c . e`` is an exact integer (int8 products summed in int32, or in float32 while
``127 * 127 * D < 2**24``, else in float64). By Cauchy-Schwarz, with ``u' = s*c`` and
``q' = t*e``::

    |u.q - u'.q'| = |(u - u').q + u'.(q - q')| <= r*|q| + |u'|*rho <= r + (1 + r)*rho

since ``|q| = 1`` and ``|u'| <= |u| + r = 1 + r``. Adding :data:`SLACK` (far above the
float64 rounding of the reference's own arithmetic, about ``1e-15``) gives ``err``: the
exact cosine lies in ``[a - err, a + err]``. Let ``T`` be the k-th largest lower bound
``a - err`` among the rows that may be returned. At least k rows score ``>= T`` exactly, so
a row whose upper bound ``a + err`` is below ``T`` cannot be in the exact top k (even by a
tie: its score is strictly below k others), nor can a row whose upper bound is below the
floor. Every other row is a *candidate*: its stored embedding is read from the database in
the query's snapshot and scored by the reference formula (``_vector_scores.exact_scores``),
so the result is the full scan's, bit for bit. Rows with a non-finite value get an
infinite ``err`` (always candidates; the reference scores them NaN and drops them); rows of
norm 0 get ``s = 0`` (a candidate of them, scored NaN by the reference, is dropped too).

For random 384-dimensional data ``err`` is about 0.02 and a top 10 of a million rows has
about a hundred candidates. ``numkong``'s int8 dot product runs the scan, over a few threads
for a large store, else float32 (or float64) products of a few rows converted at a time:
the same integers, tens of times slower.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.search._vector_scores import Array

_numkong: Any
try:  # the int8 kernels (a dependency; without them numpy gives the same integers)
    _numkong = importlib.import_module("numkong")
except ImportError:  # pragma: no cover - tested by setting KERNEL to "numpy"
    _numkong = None

#: Added to every bound: covers the float64 rounding of the unit vectors, of the reference's
#: sums and of ``s * t * dot`` (each about 1e-15) many times over.
SLACK = 1e-9
#: Rows scanned at a time: the scratch of a query stays this size whatever the store's.
SCAN_ROWS = 65_536
#: The widest dimension whose int8 dot products are exact in float32 (the fallback kernel
#: sums in float64 past it, exact up to 2**53).
FLOAT32_EXACT = (2**24 - 1) // (127 * 127)
#: Which kernel computes ``codes @ e``: "numkong" when it is installed, else "numpy".
KERNEL = "numkong" if _numkong is not None else "numpy"
#: Threads a large scan is split over (the calling one and helpers): numkong's kernel lets
#: the interpreter lock go, and one core reads far less than the memory can give.
SCAN_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Scans of fewer rows stay on the calling thread (starting a thread costs about 0.1 ms).
PARALLEL_ROWS = 4 * SCAN_ROWS
_scanning = 0  # scans running in this process
_scanning_lock = threading.Lock()


def reset_after_fork() -> None:
    """In a forked child (``_vector_cache``'s fork hook): a thread of the parent may have
    held the lock, and its scans are not this process's."""
    global _scanning, _scanning_lock
    _scanning, _scanning_lock = 0, threading.Lock()


def quantize(rows: Array) -> tuple[Array, Array, Array]:
    """``(codes, scale, residual)`` of float32 ``rows`` (n, D), as the module notes say."""
    wide = rows.astype(np.float64)
    finite = np.isfinite(wide).all(axis=1)
    wide[~finite] = 0.0
    norms = np.sqrt((wide * wide).sum(axis=1))
    usable = norms > 0
    wide[usable] /= norms[usable, None]
    peak = np.abs(wide).max(axis=1) if wide.shape[1] else np.zeros(len(wide))
    scale = (peak / 127.0).astype(np.float32)
    scale[~usable] = 0.0
    step = scale.astype(np.float64)
    divisor = np.where(step > 0, step, 1.0)
    codes = np.clip(np.rint(wide / divisor[:, None]), -127, 127).astype(np.int8)
    left = wide - step[:, None] * codes.astype(np.float64)
    residual = np.sqrt((left * left).sum(axis=1)).astype(np.float32)
    residual = np.nextafter(residual, np.float32(np.inf))  # rounded up, never down
    residual[~usable] = 0.0
    # Non-finite rows: always read and scored (the reference gives them NaN).
    codes[~finite] = 0
    scale[~finite] = 1.0
    residual[~finite] = np.inf
    return codes, scale, residual


def quantize_query(query: Array) -> tuple[Array, float, float]:
    """``(e, t, rho)`` of the query (float32, norm > 0, finite)."""
    unit = query.astype(np.float64)
    unit /= np.sqrt((unit * unit).sum())
    step = float(np.abs(unit).max()) / 127.0
    codes = np.clip(np.rint(unit / step), -127, 127).astype(np.int8)
    left = unit - step * codes.astype(np.float64)
    rho = float(np.sqrt((left * left).sum()))
    return codes, step, float(np.nextafter(rho, np.inf))


@dataclass(frozen=True)
class QuantRows:
    """An immutable state of the compact copy that queries read without a lock (arrays
    may be longer than ``count``; only the first ``count`` rows are read)."""

    count: int
    dimension: int  # D: the one dimension whose rows are quantized
    index: Array  # int64 block index, ascending
    digest: Array  # uint64 digest of the block's hash (``_vector_arrays.hash_digest``)
    sizes: Array  # int32 the row's own dimension (rows of another one: scale 0)
    model: Array  # int32 position in ``models``
    scale: Array  # float32
    residual: Array  # float32
    codes: Array  # int8 (rows, D)
    models: tuple[str | None, ...]
    dims: frozenset[int]  # the sizes present in the first ``count`` rows
    widest: float  # the largest finite residual of those rows
    always: Array  # int64 positions of rows with a non-finite value (always candidates)


def _dots(codes: Array, query: Array) -> Array:
    """``codes @ query`` as exact integers (in float64 or float32)."""
    if KERNEL == "numkong" and _numkong is not None:
        dots: Array = np.asarray(_numkong.cdist(query[None, :], codes, metric="dot"))[0]
        return dots
    wide = np.float32 if codes.shape[1] <= FLOAT32_EXACT else np.float64
    vector: Array = query.astype(wide)
    product: Array = np.empty(len(codes), dtype=wide)
    for start in range(0, len(codes), 4096):  # a few MiB converted at a time
        block: Array = codes[start : start + 4096].astype(wide)
        product[start : start + 4096] = block @ vector
    return product


def candidates(
    rows: QuantRows, count: int, query: Array, ruled_out: Array | None, k: int, floor: float | None
) -> Array:
    """Positions (ascending) among the first ``count`` rows whose exact score can be in the
    top ``k`` at or above ``floor`` (``ruled_out`` rows left out), as the module notes say.

    Scanned :data:`SCAN_ROWS` at a time, in few passes: a row is kept when its approximate
    score, less the largest error of any row (``widest``), can reach the bound so far (the
    k-th best lower bound of the rows kept: it only rises, and any k rows' lower bounds
    bound the k-th best exact score from below). The bounds of the rows kept are then
    computed with their own errors. Large scans are split over :data:`SCAN_THREADS`
    threads, each with its own bound (the best of them holds for all). Rows of norm 0 may
    be kept: their stored values score NaN, which the exact scoring drops."""
    if k == 0 or count == 0:
        return np.empty(0, np.int64)
    codes_q, step, rho = quantize_query(query)
    starts = list(range(0, count, SCAN_ROWS))
    global _scanning
    with _scanning_lock:
        # Queries that run at once already share the cores: each keeps to its own thread.
        threads = SCAN_THREADS if count >= PARALLEL_ROWS and not _scanning else 1
        _scanning += 1
    try:
        return _scan(rows, count, ruled_out, k, floor, codes_q, step, rho, starts, threads)
    finally:
        with _scanning_lock:
            _scanning -= 1


def _scan(
    rows: QuantRows,
    count: int,
    ruled_out: Array | None,
    k: int,
    floor: float | None,
    codes_q: Array,
    step: float,
    rho: float,
    starts: list[int],
    threads: int,
) -> Array:
    share = -(-len(starts) // threads)
    parts = [
        _Part(rows, count, codes_q, step, rho, ruled_out, k, floor, starts[i : i + share])
        for i in range(0, len(starts), share)
    ]
    helpers = [threading.Thread(target=part.run, daemon=True) for part in parts[1:]]
    for helper in helpers:
        helper.start()
    try:
        parts[0].run()
    finally:
        for helper in helpers:
            helper.join()  # bounded: a scan of in-memory rows, no lock or I/O; errors end it
    for part in parts:
        if part.failure is not None:
            raise part.failure
    # Every part's k best lower bounds are of other rows: the k-th best of them all holds.
    lows = _top(np.concatenate([part.lows for part in parts]), k)
    reached = max(part.reached for part in parts)
    if lows.size == k:
        reached = max(reached, float(lows[0]))
    bound = max(-np.inf if floor is None else floor, reached)
    kept = [part.finish(bound) for part in parts]
    found_rows = np.concatenate(kept) if kept else np.empty(0, np.int64)
    always = rows.always[rows.always < count]
    if ruled_out is not None:
        always = always[~ruled_out[always]]
    if always.size:
        found_rows = np.union1d(found_rows, always)
    return found_rows


class _Part:
    """One thread's share of a scan: consecutive chunks of rows."""

    def __init__(
        self,
        rows: QuantRows,
        count: int,
        codes_q: Array,
        step: float,
        rho: float,
        ruled_out: Array | None,
        k: int,
        floor: float | None,
        starts: list[int],
    ) -> None:
        self.rows, self.count, self.codes_q, self.step, self.rho = rows, count, codes_q, step, rho
        self.ruled_out, self.k, self.starts = ruled_out, k, starts
        self.base = -np.inf if floor is None else floor
        self.widest = rows.widest * (1.0 + rho) + (rho + SLACK)
        self.reached = -np.inf  # a score that at least k rows reach exactly
        self.lows = np.empty(0, np.float64)  # the k best lower bounds of the rows kept
        self.kept_rows: list[Array] = []
        self.kept_approx: list[Array] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for start in self.starts:
                self._chunk(start, min(self.count, start + SCAN_ROWS))
        except BaseException as exc:  # noqa: BLE001 - raised again by the caller's thread
            self.failure = exc

    def _chunk(self, start: int, end: int) -> None:
        rows, k = self.rows, self.k
        approx = _dots(rows.codes[start:end], self.codes_q) * rows.scale[start:end]
        approx *= self.step
        if self.ruled_out is not None:
            approx[self.ruled_out[start:end]] = -np.inf
        if self.reached == -np.inf:
            # No bound yet: the k best approximate scores of this chunk give one.
            top = _top(approx, k)
            if top.size == k:
                self.reached = float(top[0]) - self.widest
        bound = max(self.base, self.reached)
        if bound == -np.inf:
            kept = np.flatnonzero(approx > -np.inf)
        else:
            kept = np.flatnonzero(approx >= bound - self.widest)
        if kept.size:
            found = approx[kept]
            kept += start
            self.kept_rows.append(kept)
            self.kept_approx.append(found)
            low = found - _errors(rows, kept, self.rho)
            self.lows = _top(np.concatenate((self.lows, _top(low, k))), k)
            if self.lows.size == k:
                self.reached = max(self.reached, float(self.lows[0]))

    def finish(self, bound: float) -> Array:
        """The rows kept whose upper bound reaches ``bound`` (ascending)."""
        if not self.kept_rows:
            return np.empty(0, np.int64)
        found_rows = np.concatenate(self.kept_rows)
        if bound == -np.inf:
            return found_rows
        approx = np.concatenate(self.kept_approx)
        chosen: Array = found_rows[approx + _errors(self.rows, found_rows, self.rho) >= bound]
        return chosen


def _errors(rows: QuantRows, positions: Array, rho: float) -> Array:
    """The bound on ``|exact - approximate|`` of the rows at ``positions``."""
    residual = rows.residual[positions].astype(np.float64)
    return residual * (1.0 + rho) + (rho + SLACK)


def _top(values: Array, k: int) -> Array:
    """The ``k`` largest of ``values`` (all if fewer), smallest first; -inf left out."""
    values = values[values > -np.inf]
    if values.size <= k:
        return np.sort(values)
    return np.sort(np.partition(values, values.size - k)[values.size - k :])


def row_bytes(dimension: int) -> int:
    """Bytes one row takes in the compact copy (its columns in ``_quantized_file``)."""
    return 32 + max(dimension, 0)
