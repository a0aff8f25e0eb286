"""A small memo of what a model computed for some series: the forecasts and calibration residuals behind a fitted
forecaster's ``predict``, ``predict_interval``, ``predict_quantiles``, ``predict_var`` and ``predict_proba``.

Each interval method costs about ``conformal_windows`` forecasts of the whole panel, and users call several of
them on the same data: sktime's ``evaluate`` with a point metric and two interval metrics forecast the panel 1 + 2
x (1 + W) times per fold, where 1 + W do. The memo sits outside the forecaster, keyed by the model object (weakly:
entries go with the model, and every fit makes its own), so predict-like methods leave the forecaster's state
exactly as it was.

An entry is valid while the model's weights are the ones it was computed with: the key holds every parameter's
identity, storage (a token per live storage object), address, dtype, device and version counter: any in-place
change (an optimiser step, ``load_state_dict``) moves the counter, and new storage put under a parameter
(``param.data = ...``, as ``torch.nn.utils.vector_to_parameters`` does) gets a new token, even where the allocator
hands it the address of weights freed before (an address alone let a loop of such swaps serve the forecast of
earlier weights). In-place writes through ``param.data`` bypass all of these; call ``forget(model)`` after those.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable

import numpy as np

ENTRIES_PER_MODEL = 4
# A value larger than this is computed and returned but not kept (1,000 series of 20 windows at horizon 720 hold
# 115 MB of residuals).
MAX_ENTRY_BYTES = 256 << 20

_lock = threading.Lock()
_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict(key -> value)
# A serial number per live storage object (torch keeps one Python object per storage while it lives): a storage
# allocated where a freed one was gets a new number, where its address and version counter can repeat.
_storage_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_serials = itertools.count()


def series_digest(values: Iterable[np.ndarray]) -> str:
    """A digest of 1-D series, their lengths and their values (NaN included) in order."""
    h = hashlib.blake2b(digest_size=16)
    for v in values:
        a = np.ascontiguousarray(v, dtype=np.float64)
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


def remembered(model, key: tuple, compute: Callable[[], object]):
    """``compute()``'s value, from the memo when ``model`` (with the same weights) already computed it for ``key``.

    The value's arrays are made read-only before they are kept, so a caller that changed them would fail loudly
    instead of changing what the next call gets."""
    value = recall(model, key)
    if value is None:
        value = compute()
        keep(model, key, value)
    return value


def recall(model, key: tuple):
    """What was kept for ``model`` (with the same weights) under ``key``, or None."""
    full_key = (_weights_state(model), key)
    with _lock:
        entries = _memo.get(model)
        if entries is None or full_key not in entries:
            return None
        entries.move_to_end(full_key)
        return entries[full_key]


def keep(model, key: tuple, value) -> None:
    """Keeps ``value`` (not None) for ``model`` under ``key``, its arrays made read-only, unless they are too large."""
    arrays = list(_arrays(value))
    for a in arrays:
        a.setflags(write=False)
    if sum(a.nbytes for a in arrays) > MAX_ENTRY_BYTES:
        return
    full_key = (_weights_state(model), key)
    with _lock:
        entries = _memo.setdefault(model, OrderedDict())
        entries[full_key] = value
        while len(entries) > ENTRIES_PER_MODEL:
            entries.popitem(last=False)


def forget(model) -> None:
    """Drops everything remembered for ``model``."""
    with _lock:
        _memo.pop(model, None)


def clear() -> None:
    """Drops everything remembered, for every model."""
    with _lock:
        _memo.clear()


def _weights_state(model) -> tuple:
    return tuple((id(p), _storage_token(p), p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def _storage_token(p) -> int | None:
    try:
        storage = p.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without a plain storage: its address stands
        return None
    with _lock:
        token = _storage_tokens.get(storage)
        if token is None:
            token = _storage_tokens[storage] = next(_serials)
    return token


def _arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays(v)
