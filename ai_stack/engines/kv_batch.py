"""The KV cache of the requests decoding together: left-padded to one length, with its attention mask."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import pad


class BatchKV:
    """A transformers cache whose rows are requests of different lengths, each left-padded to the longest.

    `mask` is [rows, cached tokens]: 1 for a real token, 0 for left padding. While no row is padded the
    batch runs the plain path (no mask, no positions), as for a single request.
    """

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.padded = False

    def clear(self) -> None:
        """Drop every row."""
        self.cache, self.mask, self.padded = None, None, False

    def add(self, cache: Any, length: int, device: torch.device) -> None:
        """Append a prefilled request's cache (one row, `length` tokens), left-padding the shorter side."""
        if self.cache is None or self.mask is None:
            self.cache = cache
            self.mask = torch.ones(1, length, dtype=torch.long, device=device)
            self.padded = False
            return
        width = int(self.mask.shape[1])
        for into, layer in zip(self.cache.layers, cache.layers, strict=True):
            keys, values = layer.keys, layer.values
            if length < width:
                keys = pad(keys, (0, 0, width - length, 0))
                values = pad(values, (0, 0, width - length, 0))
            elif length > width:
                into.keys = pad(into.keys, (0, 0, length - width, 0))
                into.values = pad(into.values, (0, 0, length - width, 0))
            into.keys = torch.cat([into.keys, keys], dim=0)
            into.values = torch.cat([into.values, values], dim=0)
        new = torch.ones(1, length, dtype=torch.long, device=self.mask.device)
        if length < width:
            new = pad(new, (width - length, 0))
        elif length > width:
            self.mask = pad(self.mask, (length - width, 0))
        self.mask = torch.cat([self.mask, new], dim=0)
        self.padded = bool((self.mask == 0).any())

    def step_mask(self) -> torch.Tensor:
        """The mask with a column for the token each row feeds in this decode step (kept for the next)."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(int(self.mask.shape[0]), 1)], dim=1)
        return self.mask

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (by index, in order) and trim the columns that are padding in all of them."""
        if not rows:
            self.clear()
            return
        assert self.mask is not None
        indices = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(indices)
        mask = self.mask[indices]
        start = int(torch.nonzero(mask.any(dim=0))[0, 0])
        if start:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]
            mask = mask[:, start:]
        self.mask = mask
        self.padded = bool((mask == 0).any())
