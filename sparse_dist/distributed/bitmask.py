"""Masks stored as packed bits: one bit per weight, eight weights per byte.

Element ``i`` of a mask is bit ``i % 8`` (least significant first) of byte ``i // 8``. Packing and
unpacking use torch operations only, so masks live on whatever device their weights live on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BIT_VALUES = {}
_POPCOUNT = {}


def _bit_values(device: torch.device) -> torch.Tensor:
    if device not in _BIT_VALUES:
        _BIT_VALUES[device] = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=device)
    return _BIT_VALUES[device]


def popcount(bits: torch.Tensor) -> int:
    """Number of set bits in a uint8 tensor (a 256-entry table, on the tensor's device)."""
    if bits.device not in _POPCOUNT:
        _POPCOUNT[bits.device] = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64,
                                              device=bits.device)
    return int(_POPCOUNT[bits.device][bits.long()].sum()) if bits.numel() else 0


@dataclass
class PackedMask:
    """A boolean mask of ``numel`` elements in ``ceil(numel / 8)`` bytes."""

    bits: torch.Tensor
    numel: int

    @classmethod
    def pack(cls, mask: torch.Tensor) -> PackedMask:
        flat = mask.reshape(-1).to(torch.bool)
        numel = flat.numel()
        padded = torch.zeros((numel + 7) // 8 * 8, dtype=torch.uint8, device=flat.device)
        padded[:numel] = flat
        bits = (padded.view(-1, 8) * _bit_values(flat.device)).sum(dim=1, dtype=torch.uint8)
        return cls(bits=bits, numel=numel)

    @classmethod
    def full(cls, numel: int, value: bool, device: torch.device | str = "cpu") -> PackedMask:
        return cls.pack(torch.full((numel,), value, dtype=torch.bool, device=device))

    def unpack(self) -> torch.Tensor:
        """The mask as a flat bool tensor of ``numel`` elements."""
        spread = (self.bits.unsqueeze(1) & _bit_values(self.bits.device)) != 0
        return spread.reshape(-1)[: self.numel]

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
