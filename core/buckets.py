"""Fixed-shape buckets, for targets that run fastest on fixed shapes (Core ML).

A bucket fixes every symbolic dim of the graph contract (core/contract.py): an image size fixes
the latent grid and the target tokens, a prompt length the encoder's tokens, the text and the
prefix. Batch is one: a session runs a batch as that many calls. Condition images are not
bucketed yet, so `cond` is zero and the encoder's image tables hold their zero row alone.

Torch-free: export names the buckets, the manifest records them, and the runtime picks one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .units import MAX_SIDE, PIXELS_PER_SLOT, PIXELS_PER_TOKEN

SIZE_DIMS = frozenset({"target", "latent_height", "latent_width"})
PROMPT_DIMS = frozenset({"tokens", "text", "prefix"})


@dataclass(frozen=True, order=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def parse_sizes(text: str) -> tuple[Size, ...]:
    """'1024x1024,768x1344' -> sizes (width x height in pixels), each a multiple of 32 up to 2048."""
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        width, sep, height = item.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ValueError(f"size {item!r} is not WIDTHxHEIGHT, e.g. 1024x1024")
        size = Size(int(width), int(height))
        for value in (size.width, size.height):
            if value % PIXELS_PER_SLOT or not PIXELS_PER_SLOT <= value <= MAX_SIDE:
                raise ValueError(f"size {item}: sides must be multiples of {PIXELS_PER_SLOT} up to {MAX_SIDE}")
        sizes.append(size)
    if not sizes:
        raise ValueError("no sizes given")
    return tuple(sorted(set(sizes)))


def parse_lengths(text: str) -> tuple[int, ...]:
    """'128,512' -> prompt lengths in tokens after the chat template's system turn."""
    try:
        lengths = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"prompt lengths {text!r} must be comma-separated token counts, e.g. 128,512") from None
    if not lengths or lengths[0] < 1:
        raise ValueError(f"prompt lengths {text!r} must be positive token counts")
    return tuple(lengths)


def size_dims(size: Size) -> dict[str, int]:
    h, w = size.height // PIXELS_PER_TOKEN, size.width // PIXELS_PER_TOKEN
    return {"latent_height": h, "latent_width": w, "target": h * w}


def prompt_dims(length: int, dropped: int) -> dict[str, int]:
    """`dropped`: the system turn's tokens, which the encoder reads and the transformer does not."""
    return {"text": length, "prefix": length, "tokens": length + dropped}


def functions(stem: str, dims_used: set[str], sizes, lengths, dropped: int) -> dict[str, dict[str, int]]:
    """Function name -> the dims it fixes, for a graph whose contract uses `dims_used`: one per
    size, per prompt length, or per pair, as the graph depends on either or both. Buckets that
    fix the same dims share one function (the step sees 512x1024 and 1024x512 alike: the image's
    geometry reaches it only through host-computed RoPE tables)."""
    axes = []
    if dims_used & SIZE_DIMS:
        axes.append([(str(s), size_dims(s)) for s in sizes])
    if dims_used & PROMPT_DIMS:
        axes.append([(f"t{n}", prompt_dims(n, dropped)) for n in lengths])
    result = {}
    for combo in itertools.product(*axes):
        name = "_".join([stem, *(label for label, _ in combo)])
        dims = {"batch": 1, "cond": 0, "image_rows": 1}
        for _, d in combo:
            dims.update({k: v for k, v in d.items() if k in dims_used or k in PROMPT_DIMS})
        if dims not in result.values():
            result[name] = dims
    return result


def concrete_shape(shape: list[int | str], dims: dict[str, int]) -> tuple[int, ...]:
    """A declared shape (ints and symbols such as '16*latent_height') at one bucket's dims."""

    def size(d):
        if isinstance(d, int):
            return d
        factor, _, name = d.rpartition("*")
        return int(factor or 1) * dims[name]

    return tuple(size(d) for d in shape)
