"""Diffusers-format model directories: write one (`qiedge init`), read one back.

A directory holds `model_index.json` and one folder per component (`transformer/`, `vae/`,
`text_encoder/`, `processor/`, `scheduler/`), each with its `config.json` and safetensors; the
same directory loads in diffusers' `QwenImage21Pipeline.from_pretrained` offline.

Reading configs needs no torch; loading or writing weights imports it when called.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from qiedge.core.files import sha256_file, staged_directory
from qiedge.core.scheduler import SchedulerConfig

from . import presets
from .presets import EncoderConfig, Preset, TransformerConfig, VAEConfig

DIFFUSERS_VERSION = "0.42.1"
COMPONENTS = ("transformer", "vae", "text_encoder", "processor", "scheduler")

# Renders the system message exactly as the pipeline's raw template does; the pipeline counts
# its tokens to know how many to drop.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class ModelDirError(ValueError):
    pass


def demo_model_dir() -> Path:
    """The trained demo checkpoint shipped with qiedge (training/train_demo.py): the default model."""
    path = Path(__file__).resolve().parent / "checkpoints" / "demo"
    if not (path / "model_index.json").is_file():
        raise ModelDirError(f"the built-in demo model is missing from {path}; pass --model DIR")
    return path


@dataclass(frozen=True)
class ModelDir:
    """A model on disk in diffusers' layout: its configs, and where its weights are (loaded only
    on request). The runtime's torch backends and the export's weight sources read it."""

    path: Path
    transformer: TransformerConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    sample_sigmas: tuple[float, ...] | None

    @classmethod
    def open(cls, path: str | Path) -> ModelDir:
        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise ModelDirError(f"{path} is not a model directory: no model_index.json")
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise ModelDirError(f"{path} is missing component folder(s): {', '.join(missing)}")
        sigmas = _config(_Index, path / "model_index.json").sample_sigmas
        return cls(
            path=path,
            transformer=_config(TransformerConfig, path / "transformer" / "config.json"),
            vae=_config(VAEConfig, path / "vae" / "config.json"),
            scheduler=_config(SchedulerConfig, path / "scheduler" / "scheduler_config.json"),
            sample_sigmas=sigmas or None,
        )

    def fingerprint(self) -> str:
        """sha256 over every file's path and content: the identity of these exact weights. Hashed
        once per process while no file's size or modification time changes (a 7B checkpoint is
        about 30 GB, and one `quantize` run asks several times)."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        listing = tuple((f.relative_to(self.path).as_posix(), *_identity(f.stat())) for f in files)
        return _fingerprint(self.path.resolve(), listing)

    @property
    def encoder_config(self) -> dict:
        return _read_json(self.path / "text_encoder" / "config.json")

    def load_transformer(self, dtype=None, device="cpu"):
        from .transformer import QwenImage2Transformer

        return _load(QwenImage2Transformer, self.transformer, self.path / "transformer", dtype, device)

    def load_vae(self, dtype=None, device="cpu"):
        from .vae import QwenImage2VAE

        return _load(QwenImage2VAE, self.vae, self.path / "vae", dtype, device)

    def load_condition_encoder(self, dtype=None, device="cpu"):
        import torch
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.utils import logging as hf_logging

        from .condition_encoder import ConditionEncoder
        from .weights import open_weights

        folder = self.path / "text_encoder"
        if not (folder / "config.json").is_file():
            raise ModelDirError(f"{folder} has no config.json")
        for path in weight_files(folder):  # headers checked here, so a bad file is named
            with open_weights(path):
                pass
        hf_logging.disable_progress_bar()
        with _named(folder):
            model = Qwen3VLForConditionalGeneration.from_pretrained(
                folder, dtype=dtype or torch.float32, local_files_only=True
            )
        with _named(self.path / "processor"):
            processor = Qwen3VLProcessor.from_pretrained(self.path / "processor", local_files_only=True)
        return ConditionEncoder(model.to(device).eval(), processor)


def _identity(stat) -> tuple[int, ...]:
    """What changes when a file is written or replaced: ctime moves on any change (no copy keeps
    it, unlike mtime), and another inode is another file."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@functools.lru_cache(maxsize=16)
def _fingerprint(root: Path, listing: tuple[tuple, ...]) -> str:
    digest = hashlib.sha256()
    for name, *_ in listing:
        digest.update(name.encode() + b"\0")
        digest.update(sha256_file(root / name).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _named(folder: Path):
    """transformers' own loading errors, with the folder they are about."""
    try:
        yield
    except Exception as e:
        raise ModelDirError(f"{folder}: transformers cannot load it ({type(e).__name__}: {e})") from None


def _load(cls, config, folder: Path, dtype, device):
    import torch

    from .weights import load_into

    with torch.device("meta"):
        module = cls(config)
    return load_into(module, folder, dtype or torch.float32, device)


def weight_files(folder: Path) -> list[Path]:
    from .weights import weight_files as files

    return files(folder)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelDirError(f"missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} is not a JSON object")
    return data


@dataclass(frozen=True)
class _Index:
    """What qiedge reads of `model_index.json` (diffusers reads the rest)."""

    sample_sigmas: tuple[float, ...] | None = None


def _config(cls, path: Path):
    try:
        return presets.from_dict(cls, _read_json(path), str(path))
    except ModelDirError:
        raise
    except ValueError as e:
        raise ModelDirError(str(e)) from None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def init_model_dir(preset: Preset, out: str | Path, seed: int = 0) -> Path:
    """Write a complete model directory with deterministic random weights.

    Written through `staged_directory`, so a failure never leaves a half-written model behind.
    """
    if preset.name == presets.QWEN_IMAGE_2_7B.name:
        raise ModelDirError(
            "init writes random weights for the tiny and small presets only; "
            "the 7B preset is built on the meta device or loaded from a checkpoint"
        )
    with staged_directory(Path(out)) as tmp:
        _write_components(preset, tmp, seed)
    return Path(out)


def _write_components(preset: Preset, root: Path, seed: int) -> None:
    import torch

    from .transformer import QwenImage2Transformer
    from .vae import QwenImage2VAE

    generator = torch.Generator().manual_seed(seed)
    transformer = QwenImage2Transformer(preset.transformer)
    _randomize(transformer, generator)
    _write_diffusers_module(root / "transformer", transformer, preset.transformer, "QwenImage21Transformer2DModel")
    vae = QwenImage2VAE(preset.vae)
    _randomize(vae, generator)
    _write_diffusers_module(root / "vae", vae, preset.vae, "AutoencoderKLQwenImage21")
    _write_text_encoder(root, preset.encoder, seed)
    _write_processor(root / "processor")
    _write_json(
        root / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            **presets.config_dict(SchedulerConfig()),
            "invert_sigmas": False,
            "stochastic_sampling": False,
            "use_beta_sigmas": False,
            "use_exponential_sigmas": False,
            "use_karras_sigmas": False,
        },
    )
    _write_json(
        root / "model_index.json",
        {
            "_class_name": "QwenImage21Pipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "processor": ["transformers", "Qwen3VLProcessor"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
            "transformer": ["diffusers", "QwenImage21Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLQwenImage21"],
            "sample_sigmas": list(preset.sample_sigmas) if preset.sample_sigmas else None,
        },
    )


def _randomize(module, generator) -> None:
    """Deterministic weights with the scale of a trained net: 1/sqrt(fan_in) for linear maps,
    norms perturbed around their identity value so every parameter matters in parity tests."""
    import torch

    for name, p in module.named_parameters():
        p.requires_grad_(False)
        if name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=generator))
        elif name.endswith("gamma") or p.ndim == 1:
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
        else:
            p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)


def _write_diffusers_module(folder: Path, module, config, class_name: str) -> None:
    from .weights import save

    folder.mkdir(parents=True)
    _write_json(
        folder / "config.json",
        {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **presets.config_dict(config)},
    )
    save(module, folder / "diffusion_pytorch_model.safetensors")


def _write_text_encoder(root: Path, config: EncoderConfig, seed: int) -> None:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_config = Qwen3VLConfig(
        text_config=dict(config.text_config),
        vision_config=dict(config.vision_config),
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(hf_config).eval()
    model.save_pretrained(root / "text_encoder")


def build_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per UTF-8 byte) plus Qwen's special
    tokens, ids 256.. in the order of `presets.TINY_SPECIAL_TOKENS`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in presets.TINY_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _image_processor():
    from transformers import Qwen2VLImageProcessor

    # Pixel limits wide enough that images already a multiple of 32 px are never resized: each
    # encoder slot must cover exactly the 2x2 latent tokens the VAE makes of the same pixels.
    return Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 4096 * 4096},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def image_processor_config() -> dict:
    """The image settings `init` writes, for exports of a preset (which has no processor folder)."""
    return _image_processor().to_dict()


def _write_processor(folder: Path) -> None:
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image_processor = _image_processor()
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
