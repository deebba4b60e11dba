"""Core ML packages of a model for every attention layout and compression mode: each component's
package size, its parity against the fp32 reference (worst PSNR over the cases, relative to the
reference's peak) and whole images' PSNR, all measured by executing the saved programs in NumPy.

    python bench/coreml_matrix.py [--model DIR (default: the demo checkpoint)] [--modes ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine_header, table

LAYOUTS = {"split_einsum": "cpu_and_ne", "plain": "cpu_and_gpu"}
MODES = ("none", "int8", "int4", "palettize4", "palettize6", "mixed")
SIZES = "64x64,96x64"  # what the parity cases and end-to-end requests run at


def package_mb(root: Path, entry: dict) -> float:
    graphs = [c["graph"] for c in entry.get("chunks", [])] or [entry["graph"]]
    return sum(f.stat().st_size for g in graphs for f in (root / g).rglob("*") if f.is_file()) / 2**20


def measure(model: Path, layout: str, mode: str, out: Path) -> list[dict]:
    from qiedge.core.buckets import parse_sizes
    from qiedge.export.run import export_artifacts
    from qiedge.parity.checks import run_parity
    from qiedge.quantization.recipe import Recipe
    from qiedge.reference_model.model_dir import ModelDir

    options = {
        "compute_units": LAYOUTS[layout],
        "sizes": parse_sizes(SIZES),
        "prompt_lengths": (16, 160),
        "compress": None if mode == "none" else mode,
        "sensitive": Recipe.load("int8").keep_high_precision if mode == "mixed" else (),
    }
    manifest = export_artifacts(out, target="coreml", model=ModelDir.open(model), target_options=options)
    report = run_parity(out, model)
    image = min(c["psnr_db"] for c in report["end_to_end"]["cases"])
    return [
        {
            "component": name,
            "layout": layout,
            "compression": mode,
            "mb": package_mb(out, manifest["components"][name]),
            "psnr_db": result["worst_psnr_db"],
            "rel_l2": result["worst_rel_l2"],
            "image_psnr_db": image,
        }
        for name, result in report["components"].items()
    ]


def main() -> None:
    from qiedge.reference_model.model_dir import demo_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(demo_model_dir()))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    print(machine_header())
    rows = []
    for layout in args.layouts.split(","):
        for mode in args.modes.split(","):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                rows += measure(Path(args.model), layout, mode, Path(tmp) / "art")
            print(f"{layout} {mode}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    headers = ["component", "layout", "compression", "MB", "PSNR dB", "rel L2", "image PSNR dB"]
    keys = ["component", "layout", "compression", "mb", "psnr_db", "rel_l2", "image_psnr_db"]
    print(table(headers, [[r[k] for k in keys] for r in rows]))


if __name__ == "__main__":
    main()
