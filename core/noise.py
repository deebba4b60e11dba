"""torch's CPU `randn` in NumPy, so the runtime draws diffusers' initial noise without torch.

torch fills a float32 tensor of 16 or more elements with mt19937 uniforms (24-bit) turned into
normals by Box-Muller in blocks of 16 (first 8 give radii/cos, last 8 angles/sin); when the size
is not a multiple of 16 the last 16 values are redrawn from fresh uniforms. torch's vectorised
log/cos/sin may round differently in the last ulp: most values are bit-equal, all within 5e-7.
"""

from __future__ import annotations

import numpy as np

BLOCK = 16
# torch's CPU generator seeds its mt19937 with the low 32 bits of the seed, so a larger seed would
# only repeat a smaller one: seeds are 0 to 2^32 - 1.
SEEDS = 1 << 32


def torch_randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 normals equal (to float32 rounding) to
    `torch.randn(shape, generator=torch.Generator().manual_seed(seed))`."""
    count = int(np.prod(shape))
    if count < BLOCK:
        raise ValueError(f"torch draws tensors under {BLOCK} elements another way; got {count}")
    bits = np.random.MT19937(0)
    if not 0 <= seed < SEEDS:
        raise ValueError(f"seed {seed} is outside 0-{SEEDS - 1}")
    bits._legacy_seeding(seed)

    def uniform(n: int) -> np.ndarray:
        raw = bits.random_raw(n).astype(np.uint32) & np.uint32((1 << 24) - 1)
        return raw.astype(np.float32) * np.float32(2.0**-24)

    uniforms = uniform(count)
    whole = count - count % BLOCK
    out = np.empty(count, dtype=np.float32)
    out[:whole] = _box_muller(uniforms[:whole])
    if count % BLOCK:
        out[count - BLOCK :] = _box_muller(uniform(BLOCK))
    return out.reshape(shape)


def _box_muller(uniforms: np.ndarray) -> np.ndarray:
    blocks = uniforms.reshape(-1, 2, BLOCK // 2)
    radius = np.sqrt(np.float32(-2) * np.log(np.float32(1) - blocks[:, 0]))
    theta = np.float32(2 * np.pi) * blocks[:, 1]
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)
