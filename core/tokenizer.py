"""Prompt tokenization for the graphs, with `tokenizers` and NumPy only (no transformers, no torch).

Produces what transformers' Qwen3VLProcessor produces for Qwen-Image-2's template: left-padded
ids and mask, each `<|image_pad|>` expanded to its condition image's token count, and the
text-only M-RoPE positions (cumsum of the mask, minus one; core/vision.py places images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qiedge.core.prompt import IMAGE_PAD, MAX_PROMPT_TOKENS, chat_prompt, system_message


@dataclass
class TokenizedPrompts:
    input_ids: np.ndarray  # [B, S] int64, left-padded
    attention_mask: np.ndarray  # [B, S] int64
    position_ids: np.ndarray  # [3, B, S] int64 (valid for text; images need the vision tower's own)


class PromptTokenizer:
    def __init__(self, tokenizer_json: Path):
        from tokenizers import Tokenizer

        self.path = tokenizer_json
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # the tokenizers library raises bare Exceptions for bad files
            raise ValueError(f"{tokenizer_json} is not a tokenizer file ({e or type(e).__name__})") from None
        self.pad_id = self._token_id("<|endoftext|>")
        self.image_pad_id = self._token_id(IMAGE_PAD)
        self.drop = len(self._encode(system_message()))

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer {self.path} has no {token} token")
        return token_id

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def check_prompt(self, prompt: str) -> None:
        count = len(self._encode(prompt))
        if count > MAX_PROMPT_TOKENS:
            raise ValueError(f"prompt is {count} tokens long; the limit is {MAX_PROMPT_TOKENS}")

    def __call__(self, prompts: list[str], image_tokens: list[int] = ()) -> TokenizedPrompts:
        """Tokenize a batch; image_tokens are the condition images' vision-token counts, in order."""
        slots = list(image_tokens)
        rows = []
        for prompt in prompts:
            self.check_prompt(prompt)
            rows.append(self._expand_slots(self._encode(chat_prompt(prompt, len(slots))), slots))
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, length - len(row) :] = row
            mask[b, length - len(row) :] = 1
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)
        return TokenizedPrompts(ids, mask, np.broadcast_to(positions, (3, *positions.shape)).copy())

    def _expand_slots(self, ids: list[int], slots: list[int]) -> list[int]:
        out, images = [], iter(slots)
        for token in ids:
            out.extend([token] * next(images) if token == self.image_pad_id else [token])
        return out
