"""Repeated SH rows: a Gaussian whose higher SH bands equal an earlier Gaussian's in the source
may take that Gaussian's decoded bands (an index) instead of coding its own (the encoder's
rate-distortion choice; decoding stays exact).

Why: files decoded from palettized formats repeat whole SH rows. SOG stores SH as k-means
palette entries: playbot_lod2 holds 65,529 distinct rows for 125,000 Gaussians, playbot_lod3
16,384 for 31,000. A repeat costs log2(entries) bits for the index plus its flag, against ~25
bits of SH a Gaussian at SPZ's fidelity on playbot_lod2 and ~60 at SOG's.

The palette is every SH row coded in full so far, in decoding order, so the decoder builds it
from what it decodes and the file stores no entries of its own. A group's rows are decoded as one
batch: its rows coded in full join the palette first, then its repeats are filled in, so an index
may point to an earlier group's row or to one of this group's rows coded in full.

Section layout, one record per coding group: u32 length + flags (`encode_bits`, one per Gaussian
the group codes), u32 length + indices (ANS words, uniform over the palette's size after the
group's rows coded in full joined it, coding/uniform.py), u32 CRC-32 of the flags and indices.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..coding.bits import decode_bits, encode_bits
from ..coding.uniform import decode_uniform, encode_uniform
from ..errors import FormatError, IntegrityError

STAGE = "sh"  # the stage whose rows may repeat
SECTION = "sh_repeats"


class Palette:
    """The rows coded in full so far (both sides), and on the encoder's side which source row
    each entry holds. An entry is a row of `values` (the stage's values as decoded, where a row
    coded in full keeps its values), held as its row number: no copy of the rows."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.rows = np.zeros(values.shape[0], dtype=np.int64)
        self.size = 0
        self.of_key: dict[bytes, int] = {}

    def entry(self, index: np.ndarray) -> np.ndarray:
        """The values of entries `index`."""
        return self.values[self.rows[index]]

    def add(self, rows: np.ndarray) -> None:
        """Rows of `values` coded in full join the palette, in this order."""
        k = rows.size
        self.rows[self.size:self.size + k] = rows
        self.size += k

    def references(self, true: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What each of a group's rows could repeat: (entry, owner, total). `entry`: the palette
        entry of an earlier row with the same source values, else −1. `owner`: for a row with no
        such entry, the row of this group with the same values and the largest `weight` (coded in
        full, so the rows that inherit its error are those for which errors matter less), −1 for
        that row itself. `total`: each row's weight plus that of the rows it owns."""
        entry = np.full(true.shape[0], -1, dtype=np.int64)
        owner = np.full(true.shape[0], -1, dtype=np.int64)
        total = np.array(weight, dtype=np.float64)
        first: dict[bytes, int] = {}
        for i in np.argsort(-weight, kind="stable"):
            key = true[i].tobytes()
            e = self.of_key.get(key, -1)
            if e >= 0:
                entry[i] = e
            elif first.setdefault(key, i) != i:
                owner[i] = first[key]
                total[owner[i]] += weight[i]
        return entry, owner, total

    def add_owners(self, rows: np.ndarray, true: np.ndarray, weight: np.ndarray) -> None:
        """`add` on the encoder's side (`true`: the rows' source values), with the same owner per
        key as `references`."""
        start = self.size
        self.add(rows)
        for i in np.argsort(-weight, kind="stable"):
            self.of_key.setdefault(true[i].tobytes(), start + int(i))


def encode_group(flags: np.ndarray, index: np.ndarray, palette_size: int) -> bytes:
    """One group's record; `palette_size` after the group's rows coded in full were added."""
    flags = np.asarray(flags, dtype=bool)
    index = np.asarray(index, dtype=np.int32)
    if index.size and (palette_size < 1 or index.min() < 0 or index.max() >= palette_size):
        raise ValueError("repeat index outside the palette")
    fb = encode_bits(flags.astype(np.uint8))
    ib = encode_uniform(index, np.full(index.size, palette_size, np.int64), "repeat indices")
    crc = zlib.crc32(flags.astype(np.uint8).tobytes() + index.astype("<i4").tobytes())
    return struct.pack("<I", len(fb)) + fb + struct.pack("<I", len(ib)) + ib + struct.pack("<I", crc)


def decode_group(data: bytes, pos: int, n_rows: int, palette_before: int, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(flags, indices, position after the record) of one group's record starting at `pos`.
    Indices range over the palette as it stands after the group's own rows coded in full."""
    def take(n: int, part: str) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise FormatError(f"{what}: truncated in its {part}")
        out = bytes(data[pos:pos + n])
        pos += n
        return out

    fb = take(struct.unpack("<I", take(4, "flags length"))[0], "flags")
    flags = decode_bits(fb, n_rows).astype(bool)
    ib = take(struct.unpack("<I", take(4, "indices length"))[0], "indices")
    k = int(flags.sum())
    palette_size = palette_before + n_rows - k
    if k and palette_size < 1:
        raise FormatError(f"{what}: repeats before any row was coded")
    index = decode_uniform(ib, np.full(k, palette_size, np.int64), f"{what}, indices").astype(np.int32)
    (crc,) = struct.unpack("<I", take(4, "checksum"))
    if zlib.crc32(flags.astype(np.uint8).tobytes() + index.astype("<i4").tobytes()) != crc:
        raise IntegrityError(f"{what}: decoded repeats differ from what the encoder coded")
    return flags, index, pos
