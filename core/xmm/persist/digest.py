"""One digest of tensor contents: names, dtypes, shapes and exact bytes, for cache keys and cross-process checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn



def tensor_digest(
    tensors: nn.Module | Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> str:
    """sha256 hex digest over ``tensors`` in their given order.

    ``tensors``: a module (its state dict: parameters and buffers), a mapping name -> tensor, ``(name, tensor)``
    pairs, or plain tensors (named by position). Each tensor contributes ``name:dtype:shape;`` and its raw bytes, so
    two digests are equal exactly when the names, dtypes, shapes and values are (bit for bit, NaNs included).
    """
    import torch
    from torch import nn

    if isinstance(tensors, nn.Module):
        items: Iterable[tuple[str, torch.Tensor]] = tensors.state_dict().items()
    elif isinstance(tensors, Mapping):
        items = tensors.items()
    else:
        items = (x if isinstance(x, tuple) else (str(i), x) for i, x in enumerate(tensors))
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
