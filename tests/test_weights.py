import pytest
import torch
from qiedge.reference_model import weights
from qiedge.reference_model.presets import TINY
from qiedge.reference_model.transformer import QwenImage2Transformer
from safetensors.torch import save_file


def test_mismatch_lists_every_missing_unexpected_and_misshaped_key(tmp_path):
    state = QwenImage2Transformer(TINY.transformer).state_dict()
    state.pop("proj_out.weight")
    state.pop("img_in.weight")
    state["bogus.weight"] = torch.zeros(2)
    state["modulation.1.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with torch.device("meta"):
        module = QwenImage2Transformer(TINY.transformer)
    with pytest.raises(weights.WeightsMismatch) as err:
        weights.load_into(module, tmp_path)
    message = str(err.value)
    for needle in (
        "missing 2",
        "img_in.weight",
        "proj_out.weight",
        "unexpected 1",
        "bogus.weight",
        "modulation.1.weight (3, 3) vs (256, 64)",
    ):
        assert needle in message


def test_loads_strictly_and_exactly(tmp_path):
    source = QwenImage2Transformer(TINY.transformer)
    weights.save(source, tmp_path / "diffusion_pytorch_model.safetensors")
    with torch.device("meta"):
        module = QwenImage2Transformer(TINY.transformer)
    loaded = weights.load_into(module, tmp_path)
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_no_weights_is_a_clear_error(tmp_path):
    with pytest.raises(weights.WeightsError, match="no \\*.safetensors"):
        weights.weight_files(tmp_path)


def test_a_model_directory_is_hashed_once_until_a_file_changes(tmp_path, monkeypatch):
    from qiedge.reference_model import model_dir
    from qiedge.reference_model.model_dir import ModelDir, init_model_dir

    model = ModelDir.open(init_model_dir(TINY, tmp_path / "tiny"))
    first = model.fingerprint()
    hashed = []
    sha256_file = model_dir.sha256_file
    monkeypatch.setattr(model_dir, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    assert ModelDir.open(model.path).fingerprint() == first and hashed == []
    config = model.path / "scheduler" / "scheduler_config.json"
    text = config.read_text()
    config.write_text(text.replace("1", "2", 1))  # the same size, another content
    assert model.fingerprint() != first and hashed != []
    config.write_text(text)
    assert model.fingerprint() == first
