"""The documented, stable string hash of the importer (docs/DATA.md "Bring your own data").

    h(s) = splitmix64(fnv1a64(utf8 bytes of s))

FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3, per byte: h ^= b; h *= prime,
modulo 2^64), then SplitMix64's output function (`schema.splitmix64`), which mixes FNV's weak low
bits so that `h mod n` is uniform for any n. Integers are hashed by their decimal text, so a CSV's
"123" and a Parquet int64 123 agree. Pure numpy over the string buffers, no per-row Python: the
loop runs over byte positions, each step over the strings that are still that long.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.data.schema import splitmix64

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(strings: pa.Array) -> np.ndarray:
    """FNV-1a 64 of every (non-null) string of `strings` [n] -> uint64 [n]; nulls hash like ""."""
    strings = strings.cast(pa.large_string()) if not pa.types.is_large_string(strings.type) else strings
    n = len(strings)
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[strings.offset:strings.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: step j touches a prefix
    starts, lengths = offsets[:-1][order], lengths[order]
    h = np.full(n, FNV_OFFSET, np.uint64)
    longest = int(lengths[0]) if n else 0
    still = np.searchsorted(-lengths, -np.arange(longest), side="left")  # strings longer than j
    for j in range(longest):
        k = still[j]
        h[:k] ^= data[starts[:k] + j]
        h[:k] *= FNV_PRIME
    out = np.empty_like(h)
    out[order] = h
    return out


def string_hash(strings: pa.Array) -> np.ndarray:
    """h(s) of the module docstring: uint64 [n]."""
    return splitmix64(fnv1a64(strings))


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats in [0, 1) from their top 53 bits (the hash split's draw)."""
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
