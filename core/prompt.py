"""Qwen-Image-2's prompt template (torch-free: the runtime tokenizes with it too)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
MAX_PROMPT_TOKENS = 1024


def system_message() -> str:
    """The system turn alone; its token count is how many leading tokens the pipeline drops."""
    return f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"


def chat_prompt(prompt: str, num_images: int) -> str:
    """The raw template string (the checkpoint expects it as is, not `apply_chat_template`'s).

    An empty prompt becomes " ": Qwen has no BOS token, so the encoder would have nothing to read.
    """
    images = " ".join(f"<image{i}>{IMAGE_SLOT}" for i in range(1, num_images + 1))
    return f"{system_message()}<|im_start|>user\n{images}{prompt or ' '}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class EncodedPrompt:
    embeds: np.ndarray  # [B, S_txt, hidden] float32, right-padded with zeros
    mask: np.ndarray  # [B, S_txt] bool, True at real tokens
    image_slots: np.ndarray  # [S_txt] bool, True at `<|image_pad|>` slots (shared by the batch)


def strip_prompt(hidden: np.ndarray, ids: np.ndarray, mask: np.ndarray, drop: int, image_pad_id: int) -> EncodedPrompt:
    """Drop each row's left padding and system prompt, then right-pad the batch with zeros.

    hidden [B, S, H] from the encoder over left-padded ids/mask [B, S].
    """
    mask = mask.astype(bool)
    rows = [h[m][drop:] for h, m in zip(hidden, mask)]
    length = max(r.shape[0] for r in rows)
    embeds = np.zeros((len(rows), length, hidden.shape[-1]), dtype=np.float32)
    valid = np.zeros((len(rows), length), dtype=bool)
    for b, row in enumerate(rows):
        embeds[b, : len(row)] = row
        valid[b, : len(row)] = True
    # Condition images precede the prompt, so every row has its slots at the same places.
    first = (ids[0][mask[0]] == image_pad_id)[drop:]
    image_slots = np.zeros(length, dtype=bool)
    image_slots[: len(first)] = first
    return EncodedPrompt(embeds, valid, image_slots)
