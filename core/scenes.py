"""The demo checkpoint's world: simple scenes, their prompts, and a renderer (Pillow, no torch).

A scene is a colored background with one or two shapes at named positions, or a short word in a
named color. Prompts follow a fixed grammar that `parse_prompt` reads back, which is what lets
adherence be checked without any neural network. Some (color, shape, position) combinations
are held out: training never draws them, evaluation asks for them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (245, 140, 200),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
WORDS = ("HELLO", "QWEN", "EDGE", "SUN", "CAT")
SHAPE_SIZE = 0.34  # of the image side


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    position: str

    def text(self) -> str:
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"{_article(self.color)} {self.color} {self.kind} {where}"


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = ()
    word: tuple[str, str] | None = None  # (text, color)

    def prompt(self) -> str:
        if self.word:
            return (
                f"the word {self.word[0]} in {self.word[1]} on {_article(self.background)} {self.background} background"
            )
        return (
            " and ".join(s.text() for s in self.shapes)
            + f" on {_article(self.background)} {self.background} background"
        )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def held_out(shape: Shape) -> bool:
    """About one (color, kind, position) combination in seven, fixed by a hash: never trained on."""
    return zlib.crc32(f"{shape.color}|{shape.kind}|{shape.position}".encode()) % 7 == 0


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene; `split="held-out"` gives single shapes from the held-out combinations."""
    colors = list(COLORS)
    background = colors[rng.integers(len(colors))]
    others = [c for c in colors if c != background]
    if split == "train" and rng.random() < 0.15:
        return Scene(background, word=(WORDS[rng.integers(len(WORDS))], others[rng.integers(len(others))]))
    count = 1 if split != "train" or rng.random() < 0.7 else 2
    # Two shapes go to opposite sides so they never overlap.
    places = list(POSITIONS) if count == 1 else [("left", "right"), ("top", "bottom")][rng.integers(2)]
    while True:
        positions = rng.permutation(places)[:count]
        picked = rng.choice(others, size=count, replace=False)
        shapes = tuple(Shape(SHAPES[rng.integers(len(SHAPES))], str(c), str(p)) for c, p in zip(picked, positions))
        if all(held_out(s) == (split != "train") for s in shapes):
            return Scene(background, shapes)


def render(scene: Scene, size: int) -> Image.Image:
    image = Image.new("RGBA", (size, size), COLORS[scene.background] + (255,))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, size)
    if scene.word:
        font = ImageFont.load_default(size=size // 5)
        draw.text((size / 2, size / 2), scene.word[0], fill=COLORS[scene.word[1]] + (255,), font=font, anchor="mm")
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, size: int) -> None:
    cx, cy = (v * size for v in POSITIONS[shape.position])
    r = SHAPE_SIZE * size / 2
    fill = COLORS[shape.color] + (255,)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape.kind == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy - q * np.sin(a)) for a, q in zip(angles, radii)], fill=fill)
    else:  # ring
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))


_SHAPE = r"an? (?P<color>\w+) (?P<kind>\w+) (?:on the (?P<position>\w+)|in the center)"


def parse_prompt(prompt: str) -> Scene:
    """Read a prompt of the grammar back into its scene; ValueError for anything else."""
    word = re.fullmatch(r"the word (\w+) in (\w+) on an? (\w+) background", prompt)
    if word:
        return _checked(Scene(word[3], word=(word[1], word[2])))
    match = re.fullmatch(r"(?P<shapes>.+) on an? (?P<background>\w+) background", prompt)
    if not match:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    shapes = []
    for part in match["shapes"].split(" and "):
        s = re.fullmatch(_SHAPE, part)
        if not s:
            raise ValueError(f"not a demo prompt: {prompt!r}")
        shapes.append(Shape(s["kind"], s["color"], s["position"] or "center"))
    return _checked(Scene(match["background"], tuple(shapes)))


def _checked(scene: Scene) -> Scene:
    colors = [scene.background] + [s.color for s in scene.shapes] + ([scene.word[1]] if scene.word else [])
    if any(c not in COLORS for c in colors) or any(
        s.kind not in SHAPES or s.position not in POSITIONS for s in scene.shapes
    ):
        raise ValueError(f"unknown color, shape or position in {scene.prompt()!r}")
    return scene
