"""Two attention layouts for Core ML, both exact rewrites of the reference's attention.

- `plain` (for `cpu_and_gpu`): the reference's `scaled_dot_product_attention`, one fused op.
- `split_einsum` (for `all` and `cpu_and_ne`): the layout the Neural Engine runs well, as in
  Apple's ml-stable-diffusion: one attention per head, and queries in chunks, so no tensor
  holds all heads' [S_q, S_k] scores at once and each matmul stays small enough for the engine.

The split layout replaces the transformer's `Attention.attend` while a graph is exported
(`layout()`), so the reference itself stays one readable module.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PLAIN, SPLIT_EINSUM = "plain", "split_einsum"
QUERY_CHUNK = 512  # queries per chunk: Apple's split-einsum attention chunks at this order of size


def layout_for(compute_units: str) -> str:
    return PLAIN if compute_units == "cpu_and_gpu" else SPLIT_EINSUM


def split_attention(q, k, v, mask, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """SDPA with a boolean mask, one head and one query chunk at a time.

    q [B, H, S_q, D]; k, v [B, H, S_k, D]; mask [B, 1, S_q or 1, S_k], True = attend.
    """
    scale = q.shape[-1] ** -0.5
    heads = []
    for h in range(q.shape[1]):
        chunks = []
        for start in range(0, q.shape[2], chunk):
            query = q[:, h, start : start + chunk]
            rows = mask[:, 0] if mask.shape[2] == 1 else mask[:, 0, start : start + chunk]
            scores = torch.einsum("bqd,bkd->bqk", query, k[:, h]) * scale
            # The lowest finite value, not -inf: every row has a valid key, and a finite fill stays
            # finite in fp16.
            scores = scores.masked_fill(~rows, torch.finfo(torch.float16).min)
            chunks.append(torch.einsum("bqk,bkd->bqd", scores.softmax(-1), v[:, h]))
        heads.append(torch.cat(chunks, dim=1))
    return torch.stack(heads, dim=1)


def _split_attend(self, q, k, v, mask):
    out = split_attention(q, k, v, mask)
    return self.to_out[0](out.transpose(1, 2).flatten(2))


@contextmanager
def layout(name: str):
    if name == PLAIN:
        yield
        return
    from qiedge.reference_model.transformer import Attention

    original = Attention.attend
    Attention.attend = _split_attend
    try:
        yield
    finally:
        Attention.attend = original
