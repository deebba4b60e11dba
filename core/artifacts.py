"""An artifacts directory: `manifest.json` plus one folder per exported component.

Reading it needs no torch. Every file a component uses is checked against the sha256 the
manifest records before that component is loaded, the tokenizer too; a mismatch is refused,
naming the file. A manifest is untrusted input: every path it names must stay inside the
directory (no absolute paths, no `..`, no link pointing out), and a component's graph must be
one of its hashed files (or the package holding them).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qiedge.core import typed
from qiedge.core.buckets import Size, parse_sizes
from qiedge.core.files import sha256_file
from qiedge.core.scheduler import SchedulerConfig
from qiedge.core.tiles import Tiling, tiling_for
from qiedge.core.vision import VisionFacts

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer/tokenizer.json"  # in every artifacts directory
FORMAT_VERSION = 2  # 2: the condition encoder takes vision features, the manifest the image processor


class ArtifactError(ValueError):
    pass


@dataclass(frozen=True)
class ModelFacts:
    """What the sampling loop needs to know about a model, wherever it comes from: a ModelDir or
    an artifacts manifest. Torch-free, unlike the configs the other three model types carry."""

    axes_dims_rope: tuple[int, ...]
    latent_channels: int
    scheduler: SchedulerConfig
    sample_sigmas: tuple[float, ...] | None
    tokenizer_json: Path
    vision: VisionFacts

    @classmethod
    def from_model_dir(cls, model) -> ModelFacts:
        return cls(
            model.transformer.axes_dims_rope,
            model.transformer.in_channels,
            model.scheduler,
            model.sample_sigmas,
            model.path / "processor" / "tokenizer.json",
            VisionFacts.from_model_dir(model.path, model.encoder_config),
        )


@dataclass(frozen=True)
class Artifacts:
    path: Path
    manifest: dict
    # Files already checked against their sha256: the transformer's prefix and step graphs share
    # one weights file, hashed once however many components read it.
    verified: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)  # (file, sha256)

    @classmethod
    def open(cls, path: str | Path) -> Artifacts:
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path} is not an artifacts directory: no {MANIFEST}")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path / MANIFEST} is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("components"), dict):
            raise ArtifactError(f"{path / MANIFEST} is not a qiedge manifest (no components)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path / MANIFEST} has format version {manifest.get('format_version')}; "
                f"this qiedge reads {FORMAT_VERSION}"
            )
        return cls(path, manifest)

    @functools.cached_property
    def facts(self) -> ModelFacts:
        """The manifest's model section, every value type-checked (a manifest is untrusted)."""
        where = f"{self.path / MANIFEST}: model"
        model = self.manifest.get("model")
        try:
            fields = typed.from_dict(_ModelFields, model, where)
            return ModelFacts(
                fields.axes_dims_rope,
                fields.latent_channels,
                typed.from_dict(SchedulerConfig, model.get("scheduler"), f"{where}.scheduler"),
                fields.sample_sigmas,
                self._checked(fields.tokenizer, fields.tokenizer_sha256, "the tokenizer"),
                VisionFacts.from_dict(model.get("vision"), f"{where}.vision"),
            )
        except ArtifactError:
            raise
        except ValueError as e:
            raise ArtifactError(str(e)) from None

    @functools.cached_property
    def sizes(self) -> tuple[Size, ...]:
        """The image sizes fixed-shape artifacts were exported for (Core ML's buckets, the span of
        TensorRT's profiles); none where any size goes."""
        section = self.manifest.get("buckets") or self.manifest.get("tensorrt")
        sizes = section.get("sizes") if isinstance(section, dict) else None
        if not sizes:
            return ()
        try:
            return parse_sizes(",".join(sizes))
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{self.path / MANIFEST}: sizes {sizes!r} ({e})") from None

    @functools.cached_property
    def vae_tiling(self) -> Tiling | None:
        """The tiles a fixed-shape VAE decoder was exported for (`export --vae-tile`); None: whole images."""
        pixels = self.manifest.get("vae_tile")
        if pixels is None:
            return None
        try:
            if type(pixels) is not int:
                raise ValueError
            return tiling_for(pixels)
        except ValueError:
            raise ArtifactError(
                f"{self.path / MANIFEST}: vae_tile {pixels!r} is not a tile's side "
                "(a multiple of 64 px from 128 to 2048)"
            ) from None

    def inside(self, relative: str) -> Path:
        """A path the manifest names, refused unless it stays inside the artifacts directory."""
        name = Path(relative)
        if name.is_absolute() or ".." in name.parts or not (self.path / name).resolve().is_relative_to(self.root):
            raise ArtifactError(f"{self.path / MANIFEST} names {relative!r}, outside the artifacts directory")
        return self.path / name

    def graph(self, component: str, relative: str) -> Path:
        """A graph the manifest names for `component`: one of its hashed files, or the package
        (folder) holding some of them."""
        files = self.component(component)["files"]
        if relative not in files and not any(f.startswith(relative.rstrip("/") + "/") for f in files):
            raise ArtifactError(
                f"{component}: its graph {relative!r} is not among its hashed files in {self.path / MANIFEST}"
            )
        return self.inside(relative)

    @functools.cached_property
    def root(self) -> Path:
        return self.path.resolve()

    def _checked(self, relative: str, expected: str | None, what: str) -> Path:
        file = self.inside(relative)
        if (relative, expected) in self.verified:
            return file
        if not file.is_file():
            raise ArtifactError(f"{what}: {relative} is missing from {self.path}")
        if expected is None or sha256_file(file) != expected:
            raise ArtifactError(
                f"{what}: {self.path / relative} does not match the sha256 in {MANIFEST} (or has none); "
                "the artifact was modified or corrupted, refusing to load it"
            )
        self.verified.add((relative, expected))
        return file

    @property
    def components(self) -> dict[str, dict]:
        return self.manifest["components"]

    def component(self, name: str) -> dict:
        if name not in self.components:
            raise ArtifactError(f"{self.path} has no {name} component (it has: {', '.join(self.components)})")
        entry = self.components[name]
        if not _well_formed(entry):
            raise ArtifactError(
                f"{self.path / MANIFEST}: component {name} is malformed (graph, files, inputs or outputs)"
            )
        return entry

    def verify(self, name: str) -> Path:
        """Check every file of a component against its recorded sha256; returns the graph's path."""
        entry = self.component(name)
        for relative, expected in entry["files"].items():
            self._checked(relative, expected, name)
        return self.graph(name, entry["graph"])


def _well_formed(entry) -> bool:
    """A manifest entry with what the loaders read: a graph path, files with their hashes, and
    named inputs and outputs."""
    if not isinstance(entry, dict) or not isinstance(entry.get("graph"), str):
        return False
    files = entry.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return False
    tensors = [entry.get("inputs"), entry.get("outputs")]
    return all(
        isinstance(t, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in t) for t in tensors
    )


def update_manifest(path: Path, update) -> dict:
    """Apply `update(manifest)` and rewrite the manifest atomically; returns the new manifest."""
    manifest = json.loads((path / MANIFEST).read_text())
    update(manifest)
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path / MANIFEST)
    return manifest


@dataclass(frozen=True)
class _ModelFields:
    """The manifest's model section, besides the scheduler and the image processor."""

    axes_dims_rope: tuple[int, int, int]
    latent_channels: int
    sample_sigmas: tuple[float, ...] | None
    tokenizer: str
    tokenizer_sha256: str | None = None  # None: refused when the tokenizer is checked
