"""Masks stored as packed bits: one bit per weight, eight weights per byte.

Element ``i`` of a mask is bit ``i % 8`` (least significant first) of byte ``i // 8``. Packing and
unpacking use torch operations only, so masks live on whatever device their weights live on.

Both directions work a byte (eight elements) at a time, because a pruner packs or unpacks every mask of
its fragments at each update and per-element bit arithmetic made that a large part of its step. Packing
reads eight bools as one little-endian int64 ``x`` (byte ``j`` is 0 or 1) and multiplies it by
``0x0102040810204080``: the product's top byte is ``sum_j b_j 2^j`` (the classic multiply-to-gather
bits; the multiplication wraps modulo 2^64, which is what integer tensors do). Unpacking looks each byte
up in a 256 x 8 table. The same table with all-ones words for set bits gives :meth:`PackedMask.keep_words`,
an AND mask that zeroes pruned elements exactly (NaN and inf included) with one bitwise pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_POPCOUNT = {}
_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_GATHER_BITS = 0x0102040810204080
"""(x * _GATHER_BITS) >> 56 gathers bit 0 of each byte of a little-endian int64 x into one byte, byte j to bit j."""
_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
"""The integer dtype with an element size of 1, 2, 4 or 8 bytes, for AND masks over float tensors."""


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """256 x 8 table: row ``b`` holds the bits of byte ``b``, least significant first; as bools, or for an
    integer dtype as words of all ones (a set bit) or zeros."""
    key = (device, dtype)
    if key not in _TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = bits.to(torch.bool) if dtype == torch.bool else (bits * -1).to(dtype)
        _TABLES[key] = table.to(device)
    return _TABLES[key]


def word_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype of ``dtype``'s element size: ``values.view(word_dtype(values.dtype))`` is the bit
    pattern of ``values``, which :meth:`PackedMask.keep_words` masks. Raises KeyError for other sizes."""
    return _WORD_DTYPES[torch.empty(0, dtype=dtype).element_size()]


def popcount(bits: torch.Tensor) -> int:
    """Number of set bits in a uint8 tensor: a histogram of its byte values (one pass, no per-byte
    temporaries) weighted by each value's bit count."""
    if bits.device not in _POPCOUNT:
        _POPCOUNT[bits.device] = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64,
                                              device=bits.device)
    if not bits.numel():
        return 0
    return int(torch.bincount(bits.reshape(-1), minlength=256) @ _POPCOUNT[bits.device])


@dataclass
class PackedMask:
    """A boolean mask of ``numel`` elements in ``ceil(numel / 8)`` bytes."""

    bits: torch.Tensor
    numel: int

    @classmethod
    def pack(cls, mask: torch.Tensor) -> PackedMask:
        flat = mask.reshape(-1).to(torch.bool)
        numel = flat.numel()
        if numel % 8 == 0 and flat.is_contiguous() and flat.storage_offset() % 8 == 0:
            padded = flat.view(torch.uint8)  # read in place: no padding needed
        else:
            padded = torch.zeros((numel + 7) // 8 * 8, dtype=torch.uint8, device=flat.device)
            padded[:numel] = flat
        bits = ((padded.view(torch.int64) * _GATHER_BITS) >> 56).to(torch.uint8)  # see the module docstring
        return cls(bits=bits, numel=numel)

    @classmethod
    def full(cls, numel: int, value: bool, device: torch.device | str = "cpu") -> PackedMask:
        return cls.pack(torch.full((numel,), value, dtype=torch.bool, device=device))

    def unpack(self) -> torch.Tensor:
        """The mask as a flat bool tensor of ``numel`` elements."""
        return self._spread(torch.bool)

    def keep_words(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as a flat tensor of ``numel`` integer words of ``dtype``: all ones where kept, 0 where
        pruned. ``values.view(dtype).bitwise_and_(words)`` zeroes the pruned elements of a float tensor of
        the same element size exactly (an inf or NaN too), in one pass (:func:`word_dtype`)."""
        return self._spread(dtype)

    def _spread(self, dtype: torch.dtype) -> torch.Tensor:
        table = _bit_table(self.bits.device, dtype)
        return table.index_select(0, self.bits.long()).view(-1)[: self.numel]

    def count(self) -> int:
        """Number of set bits (kept weights); padding bits are always 0."""
        return popcount(self.bits)

    def flips(self, other: PackedMask) -> int:
        """Number of elements on which two masks of the same size differ."""
        return popcount(self.bits ^ other.bits)

    @property
    def nbytes(self) -> int:
        return self.bits.numel()

    def to(self, device: torch.device | str) -> PackedMask:
        return PackedMask(bits=self.bits.to(device), numel=self.numel)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PackedMask) and self.numel == other.numel
                and torch.equal(self.bits.cpu(), other.bits.cpu()))
