"""The Qwen3-VL condition encoder: transformers' own model and processor, driven the way
Qwen-Image-2's pipeline drives them.

The prompt goes through a fixed chat template, is left-padded, and the encoder's last decoder
layer's output *before* the final norm is kept, with the system-prompt tokens dropped. Condition
images sit in `<|image_pad|>` slots before the prompt; the slots' positions come back as
`image_slots`, where the transformer puts the images' own latent tokens. Padding and system
prompt are stripped by `prompt.strip_prompt`, the same code the graph runtime uses.
"""

from __future__ import annotations

import contextlib

import torch
from PIL import Image
from qiedge.core.prompt import MAX_PROMPT_TOKENS, SYSTEM_PROMPT, EncodedPrompt, chat_prompt, strip_prompt
from qiedge.core.vision import rgb_for_vision
from torch import nn


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
        for p in prompts:
            self.check_prompt(p)
        images = images or []
        kwargs = {
            "text": [chat_prompt(p, len(images)) for p in prompts],
            "padding": True,
            "padding_side": "left",
            "return_tensors": "pt",
        }
        if images:
            kwargs["images"] = [rgb_for_vision(img) for _ in prompts for img in images]
        inputs = self.processor(**kwargs).to(self.model.device)
        base = self.model.model
        with without_final_norm(base.language_model):
            hidden = base(**inputs, use_cache=False).last_hidden_state  # [B, S, hidden]
        return strip_prompt(
            hidden.float().cpu().numpy(),
            inputs["input_ids"].cpu().numpy(),
            inputs["attention_mask"].cpu().numpy(),
            self.drop,
            self.image_token_id,
        )
