"""The Qwen3-VL condition encoder: transformers' own model and processor, driven the way
Qwen-Image-2's pipeline drives them.

The prompt goes through a fixed chat template, is left-padded, and the encoder's last decoder
layer's output *before* the final norm is kept, with the system-prompt tokens dropped. Condition
images sit in `<|image_pad|>` slots before the prompt; the slots' positions come back as
`image_slots`, where the transformer puts the images' own latent tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
MAX_PROMPT_TOKENS = 1024


def chat_prompt(prompt: str, num_images: int) -> str:
    """The raw template string (the checkpoint expects it as is, not `apply_chat_template`'s)."""
    images = " ".join(f"<image{i}>{IMAGE_SLOT}" for i in range(1, num_images + 1))
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{images}{prompt}<|im_end|>\n"
        f"<|im_start|>assistant\n"
    )


@dataclass
class EncodedPrompt:
    embeds: torch.Tensor  # [B, S_txt, hidden], right-padded with zeros
    mask: np.ndarray  # [B, S_txt] bool, True at real tokens
    image_slots: np.ndarray  # [S_txt] bool, True at `<|image_pad|>` slots (shared by the batch)


@contextlib.contextmanager
def without_final_norm(text_model: nn.Module):
    """Swap the language model's final RMSNorm for identity while encoding.

    Qwen-Image-2 reads the last decoder layer's output before that norm; transformers 5 returns
    the normed state, so the norm is lifted out for the call and put back after.
    """
    norm = text_model.norm
    text_model.norm = nn.Identity()
    try:
        yield
    finally:
        text_model.norm = norm


def vision_input(image: Image.Image) -> Image.Image:
    """RGB copy for the vision tower: the checkpoint saw alpha composited over white."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


class ConditionEncoder:
    def __init__(self, model, processor):
        self.model = model  # transformers' Qwen3VLForConditionalGeneration
        self.processor = processor  # transformers' Qwen3VLProcessor
        system = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
        self.drop = len(processor.apply_chat_template(system, tokenize=True, return_dict=False)[0])
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def check_prompt(self, prompt: str) -> None:
        count = len(self.processor.tokenizer(prompt)["input_ids"])
        if count > MAX_PROMPT_TOKENS:
            raise ValueError(f"prompt is {count} tokens long; the limit is {MAX_PROMPT_TOKENS}")

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: list[Image.Image] | None = None) -> EncodedPrompt:
        """Encode a batch of prompts, each with the same condition images (resized already)."""
        prompts = [p or " " for p in prompts]  # Qwen has no BOS: an empty prompt leaves nothing to read
        for p in prompts:
            self.check_prompt(p)
        images = images or []
        kwargs = {"text": [chat_prompt(p, len(images)) for p in prompts], "padding": True,
                  "padding_side": "left", "return_tensors": "pt"}
        if images:
            kwargs["images"] = [vision_input(img) for _ in prompts for img in images]
        inputs = self.processor(**kwargs).to(self.model.device)
        base = self.model.model
        with without_final_norm(base.language_model):
            hidden = base(**inputs, use_cache=False).last_hidden_state  # [B, S, hidden]
        return self._strip(hidden, inputs["input_ids"], inputs["attention_mask"].bool())

    def _strip(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> EncodedPrompt:
        """Drop left padding and the system prompt, then right-pad the batch with zeros."""
        rows = [h[m][self.drop:] for h, m in zip(hidden, mask)]
        slots = [(i[m] == self.image_token_id)[self.drop:] for i, m in zip(ids, mask)]
        length = max(r.shape[0] for r in rows)
        embeds = hidden.new_zeros(len(rows), length, hidden.shape[-1])
        valid = np.zeros((len(rows), length), dtype=bool)
        for b, row in enumerate(rows):
            embeds[b, : row.shape[0]] = row
            valid[b, : row.shape[0]] = True
        # Condition images precede the prompt, so every row has its slots at the same places.
        image_slots = np.zeros(length, dtype=bool)
        image_slots[: slots[0].shape[0]] = slots[0].cpu().numpy()
        return EncodedPrompt(embeds=embeds, mask=valid, image_slots=image_slots)
