"""Interrupted work: real `init`, `export`, `quantize` and `generate` runs killed with SIGKILL at
several points. A killed run never leaves an output that looks complete, never touches an
earlier good output, leaves nothing the next run does not sweep away, and the rerun succeeds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qiedge.core.files import sweep_stale
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import init_model_dir
from qiedge.runtime.evaluate import prompt_set

pytestmark = pytest.mark.slow

KILL_AFTER = (0.5, 3.0)  # seconds: while importing, and while loading or working


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model, with a recipe beside it that quantizes its two blocks (the shipped ones keep
    the first and last block in high precision, which on two blocks leaves nothing to quantize),
    and four evaluation prompts (what is killed here is the writing, not the judging: the jobs
    export one graph)."""
    from dataclasses import replace

    from qiedge.quantization.recipe import Recipe

    folder = tmp_path_factory.mktemp("killed")
    recipe = Recipe.load("int4")
    keep = ("img_in", "txt_in.*", "time_text_embed.*", "modulation.*", "norm_out.*", "proj_out")
    (folder / "recipe.json").write_text(replace(recipe, keep_high_precision=keep).to_json())
    (folder / "eval.txt").write_text("\n".join(prompt_set("held-out", 4)))
    return init_model_dir(presets.TINY, folder / "tiny", seed=0)


def qiedge(*args) -> list[str]:
    return [sys.executable, "-m", "qiedge.cli", *map(str, args)]


def killed(command: list[str], after: float) -> bool:
    """Run `command`, SIGKILL it after `after` seconds; False if it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return True


def digest(path: Path) -> str:
    """Every file under `path` (or the file itself), by name and content."""
    h = hashlib.sha256()
    for file in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
        h.update(file.relative_to(path.parent).as_posix().encode() + file.read_bytes())
    return h.hexdigest()


def files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def quantize_options(folder: Path) -> list:
    return [
        *("--format", "int4", "--recipe", folder / "recipe.json"),
        *("--eval-prompts", folder / "eval.txt", "--components", "transformer_step"),
    ]


# (command writing `out`, what a complete output has): each killed at every point of KILL_AFTER.
JOBS = {
    "init": lambda tiny, out: (qiedge("init", "--preset", "tiny", "--out", out), out / "model_index.json"),
    "export": lambda tiny, out: (
        qiedge("export", "--model", tiny, "--out", out, "--components", "transformer_step"),
        out / "manifest.json",
    ),
    "quantize": lambda tiny, out: (
        qiedge("quantize", "--model", tiny, *quantize_options(tiny.parent), "--out", out),
        out / "manifest.json",
    ),
    "generate": lambda tiny, out: (
        qiedge("generate", "x", "--model", tiny, "--width", "64", "--height", "64", "--out", out),
        out,
    ),
}


@pytest.mark.parametrize("job", JOBS)
def test_killed_runs_leave_no_output_and_the_rerun_succeeds(job, tiny, tmp_path):
    suffix = ".png" if job == "generate" else ""
    good = tmp_path / f"good{suffix}"
    command, complete = JOBS[job](tiny, good)
    subprocess.run(command, check=True, capture_output=True)
    before = digest(good)
    fresh = tmp_path / f"fresh{suffix}"
    fresh_command, fresh_complete = JOBS[job](tiny, fresh)
    for after in KILL_AFTER:
        if not killed(fresh_command, after):
            break  # finished before the kill: nothing more to interrupt
        if fresh_complete.exists():  # killed after publishing (while exiting): whole, or a defect
            if job == "generate":
                assert fresh.read_bytes() == good.read_bytes(), f"killed after {after}s: {fresh} is not whole"
                fresh.unlink()
            else:
                assert files(fresh) == files(good), f"{job} killed after {after}s left an incomplete {fresh}"
                shutil.rmtree(fresh)
        assert not fresh.exists() or (fresh.is_dir() and not any(fresh.iterdir())), f"killed after {after}s: {fresh}"
        # The same output path again: the good output is refused (directories) or replaced
        # whole by the same image (a PNG of the same seed), never damaged by a killed run.
        again, _ = JOBS[job](tiny, good)
        killed(again, after)
        assert digest(good) == before
    subprocess.run(fresh_command, check=True, capture_output=True)
    assert fresh_complete.exists()
    if job == "quantize":  # the flag reached the judge
        evaluation = json.loads(fresh_complete.read_text())["quantization"]["accuracy"]["evaluation"]
        assert evaluation["count"] == 4 and evaluation["prompts"].endswith("eval.txt")
    assert not [n for n in leftovers(tmp_path) if n.startswith(f".{fresh.name}.")], (
        "the rerun kept a killed run's files"
    )
    sweep_stale(good)  # what the next writer of the good path does
    assert leftovers(tmp_path) == []


def test_a_killed_writer_leaves_nothing_the_next_one_keeps(tmp_path):
    """sweep_stale removes staging files of dead processes, never those of a live one."""
    out = tmp_path / "art"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".art.{dead.pid}.abc").mkdir()
    (tmp_path / f".art.{os.getpid()}.def").mkdir()
    (tmp_path / f".art.{dead.pid}.x.tmp").write_text("half")
    sweep_stale(out)
    assert leftovers(tmp_path) == [f".art.{os.getpid()}.def"]
