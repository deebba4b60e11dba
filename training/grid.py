"""Draw the README's grid: a few held-out prompts, the demo model's 4-step images (second row)
under what the prompt describes (first row, rendered directly).

    python training/grid.py --out docs/demo-grid.png
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw
from qiedge.core.scenes import parse_prompt, render
from qiedge.reference_model.model_dir import demo_model_dir
from qiedge.runtime.evaluate import prompt_set
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, generate, to_uint8

SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    prompts = prompt_set("held-out", args.count - 1, seed=3) + ["the word HELLO in white on a black background"]
    runtime = open_runtime(model=demo_model_dir(), backend="torch")
    images = to_uint8(generate(Request(prompts, width=SIZE, height=SIZE, seed=0), runtime.facts, runtime.sessions))
    grid = Image.new("RGBA", (SIZE * len(prompts), SIZE * 2 + 40), (255, 255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        grid.paste(render(parse_prompt(prompt), SIZE), (SIZE * i, 0))
        grid.paste(Image.fromarray(image, "RGBA"), (SIZE * i, SIZE))
        words = prompt.split()
        for line, text in enumerate((" ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :]))):
            draw.text((SIZE * i + 4, 2 * SIZE + 4 + 16 * line), text, fill=(0, 0, 0, 255))
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
