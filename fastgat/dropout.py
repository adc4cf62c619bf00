"""Attention dropout keyed by (seed, edge slot, head): the rule every backend shares.

The mask is a pure function of its key, so the backward pass regenerates it instead of storing
an E x H tensor, and the torch, Triton, C++ and CUDA paths draw the same mask for one seed:

    idx  = slot * H + head          slot = CSR slot k of an edge, or E + i for node i's self loop
    r    = Philox4x32-10(key=(seed lo32, seed hi32), counter=(idx lo32, idx hi32, 0, 0)).word0
    keep = (r >> 1) >= threshold(p)  and a kept weight is scaled by 1 / (1 - p)

This is the word `triton.language.randint(seed, idx)` returns, so Triton kernels call that.
"""
import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def threshold(p: float) -> int:
    """31-bit integer threshold: a draw is dropped when (r >> 1) < threshold."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return int(p * 2**31)


def philox_word0(seed: Tensor, idx: Tensor) -> Tensor:
    """First output word of Philox4x32-10 as int64 in [0, 2^32), computed in int64 arithmetic.

    int64 products wrap modulo 2^64, so masking recovers the exact 32x32->64 bit halves.
    """
    seed = seed.reshape(()).to(torch.int64)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = idx & _MASK32, (idx >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        p0 = c0 * _ROUND_A
        p2 = c2 * _ROUND_B
        c0, c1, c2, c3 = (
            ((p2 >> 32) & _MASK32) ^ c1 ^ k0,
            p2 & _MASK32,
            ((p0 >> 32) & _MASK32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0


def keep_scale(seed: Tensor, slot: Tensor, heads: int, p: float, dtype: torch.dtype) -> Tensor:
    """(len(slot), heads) tensor holding 0 for dropped and 1/(1-p) for kept attention weights."""
    idx = slot.to(torch.int64).unsqueeze(1) * heads + torch.arange(heads, device=slot.device)
    keep = (philox_word0(seed.to(slot.device), idx) >> 1) >= threshold(p)
    return keep.to(dtype) / (1.0 - p)


def draw_seed(device: torch.device) -> Tensor:
    """A fresh 62-bit seed from torch's generator for `device`, so torch.manual_seed rules."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)
