"""The one-way layers of pyproject's [tool.qiedge.layers], as .ci/layers.py checks them in CI."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "layers.py"


def _checker():
    spec = importlib.util.spec_from_file_location("layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_import_points_down():
    assert _checker().violations(ROOT) == []


def test_a_wrong_import_fails_the_build(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for folder, source in {
        "core": "from qiedge.runtime.sampler import generate\n\n\ndef f():\n    import torch\n",
        "runtime": "from qiedge.core import layout\nfrom . import sampler\n",
        "quantization": "from qiedge.parity.checks import run_parity\n",  # siblings in one layer
        "parity": "from qiedge.runtime.runner import open_runtime\n",
    }.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "module.py").write_text(source)
    found = _checker().violations(tmp_path)
    assert [line.split(": ")[0] for line in found] == [
        "core/module.py:1",
        "core/module.py:5",
        "quantization/module.py:1",
    ]
    assert "must stay torch-free" in found[1]
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "qiedge.core imports qiedge.runtime.sampler" in result.stdout
