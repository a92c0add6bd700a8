"""The voxel-regression polynomial as a torch module: the baseline's TorchScript model and the generator's
optional voxel prior (its own file so that the model and the baseline's fitting/export code do not import
each other).

Example:
    >>> VoxelRegression(torch.zeros(3, 8, n_features(3)))(torch.zeros(1, 6, 4, 4)).shape
    torch.Size([1, 1, 4, 4])
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn


def n_features(n: int) -> int:
    return 1 + n + n * (n + 1) // 2


def feature_terms(n: int) -> List[Tuple[int, ...]]:
    """The contrasts each feature of :func:`quadratic_features` multiplies, in order: (), (i,), (i, j) for i <= j."""
    return [()] + [(i,) for i in range(n)] + [(i, j) for i in range(n) for j in range(i, n)]


def embed_polynomial(coef: torch.Tensor, old: Sequence[str], new: Sequence[str], fallback: torch.Tensor
                     ) -> torch.Tensor:
    """Polynomials ``coef`` (N_old, 2**N_old, F_old) of the contrasts ``old`` in the layout of the contrasts ``new``
    (``fallback``'s shape): for each target both have and each input subset of ``new`` holding one of ``old`` at
    least, the polynomial of the ``old`` contrasts in that subset (it reads no other contrast); every other row is
    ``fallback``'s. E.g. a bundled model's polynomial of t1n/t1c/t2f as a polynomial of t1n/t1c/t2w/t2f.

    Example:
        >>> wide = embed_polynomial(torch.ones(2, 4, n_features(2)), ["a", "b"], ["a", "c", "b"],
        ...                         torch.zeros(3, 8, n_features(3)))
        >>> wide[0, 0b110].tolist()  # target a from c and b: b's terms of the old polynomial, none of c
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    """
    out = fallback.clone().to(coef.dtype)
    where = {name: k for k, name in enumerate(new)}
    column = {term: k for k, term in enumerate(feature_terms(len(new)))}
    terms = feature_terms(len(old))
    moved = [tuple(sorted(where.get(old[i], -1) for i in term)) for term in terms]
    for t_old, target in enumerate(old):
        if target not in where:
            continue
        for subset in range(2 ** len(new)):
            if subset >> where[target] & 1:
                continue
            old_subset = sum(1 << k for k, name in enumerate(old) if name in where and subset >> where[name] & 1)
            if old_subset == 0:
                continue
            row = torch.zeros_like(out[0, 0])
            for k, term in enumerate(terms):
                if all(old_subset >> i & 1 for i in term):  # only the terms of the inputs in the subset
                    row[column[moved[k]]] = coef[t_old, old_subset, k]
            out[where[target], subset] = row
    return out


def quadratic_features(x: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) -> (B, F, H, W): 1, each x_i, each x_i * x_j (i <= j)."""
    feats = [torch.ones_like(x[:, :1]), x]
    n = x.shape[1]
    for i in range(n):
        feats.append(x[:, i:i + 1] * x[:, i:])
    return torch.cat(feats, dim=1)


class VoxelRegression(nn.Module):
    """Model-contract module: ``coef[target, subset]`` holds the polynomial for that target and input subset
    (subset = bitmask of available contrasts; features of absent contrasts have coefficient 0)."""

    def __init__(self, coef: torch.Tensor) -> None:
        super().__init__()
        self.n = int(coef.shape[0])
        self.register_buffer("coef", coef.float())
        self.register_buffer("bits", 2 ** torch.arange(self.n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast inference plan feeds channels-last input; these narrow element-wise maps and reductions
        # run ~6x slower in that layout on CPU (5.0 vs 0.8 ms per 256x256 slice in bf16), so use NCHW.
        x = x.contiguous()
        images = x[:, :self.n]
        target = x[:, self.n:].mean(dim=(2, 3)).argmax(dim=1)
        present = images.abs().amax(dim=(2, 3)) > 0
        present = present & (nn.functional.one_hot(target, self.n) == 0)
        subset = (present.long() * self.bits).sum(dim=1)
        coef = self.coef[target, subset]  # (B, F)
        feats = quadratic_features(images * present[:, :, None, None].to(images.dtype))
        return (feats * coef[:, :, None, None]).sum(dim=1, keepdim=True)
