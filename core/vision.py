"""Qwen3-VL's image path on the host, in NumPy and Pillow: what transformers' Qwen2VLImageProcessor
makes of a condition image (patch grid, pixel values), the vision tower's host-side tables
(learned position taps, 2D rotary angles), and the M-RoPE positions of a prompt with images
(`Qwen3VLModel.get_rope_index`). The vision graph and the condition-encoder graph take these as
inputs, so nothing data-dependent is traced and no device needs torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import typed

BICUBIC = 3  # the processors' `resample` code for bicubic (PIL's numbering)
MAX_ASPECT = 200  # the processor refuses images any longer than this


@dataclass(frozen=True)
class VisionFacts:
    """The processor's image settings and the vision tower's shape facts the host needs."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    grid_side: int  # the learned position table is grid_side x grid_side
    head_dim: int  # the vision attention's head size, which the 2D rotary angles fill
    rope_theta: float
    deepstack: int  # how many vision layers feed the language model's first layers
    hidden: int  # the language model's width: the vision tower's output size

    @classmethod
    def from_configs(cls, processor: dict, encoder: dict, source: str = "the image processor") -> VisionFacts:
        """From the processor's image settings and transformers' Qwen3VLConfig as a dict (both
        untrusted: a missing or mistyped value is refused naming `source`)."""
        try:
            vision = encoder["vision_config"]
            if processor.get("resample", BICUBIC) != BICUBIC:
                raise ValueError(f"resample {processor['resample']} is not bicubic ({BICUBIC})")
            size = processor.get("size") or {}
            values = {
                "patch_size": processor["patch_size"],
                "temporal_patch_size": processor["temporal_patch_size"],
                "merge_size": processor["merge_size"],
                "min_pixels": size.get("shortest_edge", processor.get("min_pixels")),
                "max_pixels": size.get("longest_edge", processor.get("max_pixels")),
                "image_mean": processor["image_mean"],
                "image_std": processor["image_std"],
                "rescale_factor": processor["rescale_factor"],
                "grid_side": math.isqrt(vision["num_position_embeddings"]),
                "head_dim": vision["hidden_size"] // vision["num_heads"],
                "rope_theta": (vision.get("rope_parameters") or {}).get("rope_theta", 10000.0),
                "deepstack": len(vision["deepstack_visual_indexes"]),
                "hidden": vision["out_hidden_size"],
            }
        except (KeyError, TypeError, AttributeError, ZeroDivisionError) as e:
            raise ValueError(f"{source}: missing or malformed image setting ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        return typed.from_dict(cls, values, source)

    @classmethod
    def from_model_dir(cls, path: Path, encoder: dict) -> VisionFacts:
        """A diffusers model directory: `processor/preprocessor_config.json` (the released layout) or
        the image processor inside `processor/processor_config.json` (transformers 5's)."""
        folder = path / "processor"
        released = folder / "preprocessor_config.json"
        file = released if released.is_file() else folder / "processor_config.json"
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
            processor = settings if file == released else settings["image_processor"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{file} holds no image processor settings ({type(e).__name__}: {e})") from None
        return cls.from_configs(processor, encoder, str(file))

    @classmethod
    def from_dict(cls, data: dict, source: str) -> VisionFacts:
        return typed.from_dict(cls, data, source)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def factor(self) -> int:
        """Image sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) as the processor resizes: multiples of `factor`, pixel count within bounds."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"image is {width}x{height}: the vision tower takes aspect ratios up to {MAX_ASPECT}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def rgb_for_vision(image: Image.Image) -> Image.Image:
    """RGB copy for the vision tower: the checkpoint saw alpha composited over white."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


@dataclass
class VisionInput:
    """One image as the vision graph takes it."""

    pixel_values: np.ndarray  # [patches, channels * temporal * patch * patch] float32
    grid: tuple[int, int, int]  # (t, h, w) in patches
    position_indices: np.ndarray  # [patches, 4] int64: taps into the learned position table
    position_weights: np.ndarray  # [patches, 4] float32: their bilinear weights
    rope_cos: np.ndarray  # [patches, head_dim] float32
    rope_sin: np.ndarray

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {
            "pixel_values": self.pixel_values,
            "position_indices": self.position_indices,
            "position_weights": self.position_weights,
            "rope_cos": self.rope_cos,
            "rope_sin": self.rope_sin,
        }


def vision_input(image: Image.Image, facts: VisionFacts) -> VisionInput:
    """An RGB image (alpha already composited) -> the vision graph's inputs."""
    pixels, grid = preprocess(image, facts)
    indices, weights = position_taps(grid, facts)
    cos, sin = rotary(grid, facts)
    return VisionInput(pixels, grid, indices, weights, cos, sin)


def preprocess(image: Image.Image, facts: VisionFacts) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Resize to the patch grid, rescale and normalise, patchify: the processor's pixel_values and grid.

    The normalisation is the torchvision processor's, rescale fused into mean and std; a resize is
    Pillow's bicubic, as the processor's Pillow backend does (its torchvision backend resizes
    with torch's kernel, a level apart at most; images already on the grid are not resized).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, facts.factor, facts.min_pixels, facts.max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    scale = np.float32(1.0 / facts.rescale_factor)
    mean = (np.asarray(facts.image_mean, dtype=np.float32) * scale)[:, None, None]
    std = (np.asarray(facts.image_std, dtype=np.float32) * scale)[:, None, None]
    x = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) - mean) / std  # [3, H, W]
    p, m, t = facts.patch_size, facts.merge_size, facts.temporal_patch_size
    gh, gw = height // p, width // p
    x = x.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # merge blocks first
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # one frame, repeated
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * t * p * p)), (1, gh, gw)


def _merge_order(grid: tuple[int, int, int], merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Each patch's (row, col), patches listed merge block by merge block, as the processor lays them."""
    _, h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    return rows.reshape(shape).swapaxes(1, 2).ravel(), cols.reshape(shape).swapaxes(1, 2).ravel()


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear, corners aligned: the two table rows a patch row reads, and their weights."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32)), 0, None)
    return taps, weights.astype(np.float32)


def position_taps(grid: tuple[int, int, int], facts: VisionFacts) -> tuple[np.ndarray, np.ndarray]:
    """The learned position table resampled to the image's grid, as four taps per patch."""
    rows, cols = _merge_order(grid, facts.merge_size)
    side = facts.grid_side
    h_taps, h_weights = _axis_taps(rows, grid[1], side)
    w_taps, w_weights = _axis_taps(cols, grid[2], side)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return np.tile(indices, (grid[0], 1)), np.tile(weights, (grid[0], 1))


def rotary(grid: tuple[int, int, int], facts: VisionFacts) -> tuple[np.ndarray, np.ndarray]:
    """The vision attention's 2D rotary angles: a quarter of the head on rows, a quarter on
    columns, the pair repeated to fill the head."""
    rows, cols = _merge_order(grid, facts.merge_size)
    half = facts.head_dim // 2
    inv_freq = (1.0 / facts.rope_theta ** (np.arange(0, half, 2, dtype=np.float64) / half)).astype(np.float32)
    angles = np.stack([rows, cols], axis=-1)[..., None].astype(np.float32) * inv_freq  # [N, 2, head/4]
    angles = np.concatenate([angles[:, 0], angles[:, 1]], axis=-1)
    angles = np.tile(np.concatenate([angles, angles], axis=-1), (grid[0], 1))
    return np.cos(angles), np.sin(angles)


def mrope_positions(
    input_ids: np.ndarray, attention_mask: np.ndarray, image_pad_id: int, grids: list[tuple[int, int, int]], merge: int
) -> np.ndarray:
    """[3, B, S] (time, row, column) positions of left-padded prompts whose `<|image_pad|>` runs
    hold the images of `grids` in order: text advances all three by one per token, an image
    takes its merged grid from the running position, then the position jumps by its longer side."""
    positions = np.zeros((3, *input_ids.shape), dtype=np.int64)
    for b, (ids, mask) in enumerate(zip(input_ids, attention_mask.astype(bool))):
        row, images, pos, start = [], iter(enumerate(grids)), 0, 0
        ids = ids[mask]
        while start < len(ids):
            is_image = ids[start] == image_pad_id
            end = start + 1
            while end < len(ids) and (ids[end] == image_pad_id) == is_image:
                end += 1
            if is_image:
                k, (t, h, w) = next(images)
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij")
                block = np.stack([tt, hh, ww]).reshape(3, -1) + pos
                if block.shape[1] != end - start:
                    raise ValueError(f"image {k + 1} has {block.shape[1]} tokens but {end - start} slots")
                row.append(block)
                pos += max(h, w) // merge
            else:
                row.append(np.broadcast_to(np.arange(pos, pos + end - start), (3, end - start)))
                pos += end - start
            start = end
        positions[:, b, mask] = np.concatenate(row, axis=1)
    return positions


def image_index(input_ids: np.ndarray, image_pad_id: int) -> np.ndarray:
    """[B, S] each token's row of the image tables: 0 for text, k for the k-th image token (every
    prompt of a batch holds the same images in the same order)."""
    slots = input_ids == image_pad_id
    return np.where(slots, np.cumsum(slots, axis=1), 0).astype(np.int64)


def image_tables(
    features: list[tuple[np.ndarray, np.ndarray]], hidden: int, deepstack: int
) -> tuple[np.ndarray, np.ndarray]:
    """The encoder graph's image_embeds [1 + N, hidden] and deepstack_embeds [D, 1 + N, hidden]:
    a zero row for text tokens, then each image's (embeds, deepstack) rows in order."""
    embeds = [np.zeros((1, hidden), np.float32), *(e for e, _ in features)]
    layers = [np.zeros((deepstack, 1, hidden), np.float32), *(d for _, d in features)]
    return np.concatenate(embeds), np.concatenate(layers, axis=1)
