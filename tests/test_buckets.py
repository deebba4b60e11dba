"""Fixed-shape buckets: naming, and the session that pads prompts into them, splits batches and
refuses sizes it has no function for."""

import numpy as np
import pytest
from qiedge.core.buckets import Size, concrete_shape, functions, parse_lengths, parse_sizes
from qiedge.runtime.bucketed import BucketedSession, BucketError


def test_sizes_parse_sorted_and_checked():
    assert parse_sizes("96x64, 64x64,96x64") == (Size(64, 64), Size(96, 64))
    for bad, why in (("64", "WIDTHxHEIGHT"), ("65x64", "multiples of 32"), ("4096x64", "up to 2048"), ("", "no sizes")):
        with pytest.raises(ValueError, match=why):
            parse_sizes(bad)
    assert parse_lengths("512,128") == (128, 512)
    with pytest.raises(ValueError, match="positive"):
        parse_lengths("0")


def test_functions_follow_the_dims_a_graph_uses():
    sizes, lengths = (Size(64, 32),), (16, 64)
    assert set(functions("model", {"latent_height", "latent_width"}, sizes, lengths, 5)) == {"model_64x32"}
    encoder = functions("model", {"batch", "tokens"}, sizes, lengths, 5)
    assert encoder == {
        "model_t16": {"batch": 1, "cond": 0, "image_rows": 1, "text": 16, "prefix": 16, "tokens": 21},
        "model_t64": {"batch": 1, "cond": 0, "image_rows": 1, "text": 64, "prefix": 64, "tokens": 69},
    }
    step = functions("step", {"target", "prefix"}, sizes, lengths, 5)
    assert step["step_64x32_t64"]["target"] == 2 * 4 and len(step) == 2
    assert concrete_shape(["batch", 3, "16*latent_height"], {"batch": 1, "latent_height": 2}) == (1, 3, 32)


ENTRY = {
    "functions": {
        "f_64x32_t4": {"batch": 1, "target": 8, "prefix": 4},
        "f_64x32_t8": {"batch": 1, "target": 8, "prefix": 8},
    },
    "inputs": [
        {"name": "x", "dtype": "fp16", "shape": ["batch", "target", 2]},
        {"name": "keys", "dtype": "fp16", "shape": ["batch", "prefix"]},
        {"name": "valid", "dtype": "bool", "shape": ["batch", "prefix"]},
    ],
    "outputs": [{"name": "y", "dtype": "fp16", "shape": ["batch", "target", 2]}],
}


def masked_sum(function, feeds):
    """A stand-in program: x plus the sum of valid keys, so padding must be masked to be exact."""
    assert feeds["keys"].shape[1] == ENTRY["functions"][function]["prefix"]
    total = (feeds["keys"] * feeds["valid"]).sum(axis=1)
    return {"y": feeds["x"] + total[:, None, None]}


def test_session_pads_prompts_splits_batches_and_cuts_back():
    calls = []
    session = BucketedSession("demo", ENTRY, lambda f, feeds: calls.append(f) or masked_sum(f, feeds))
    rng = np.random.default_rng(0)
    x, keys = rng.standard_normal((3, 8, 2)), rng.standard_normal((3, 5))
    valid = np.ones((3, 5), bool)
    valid[1, 3:] = False
    out = session.run({"x": x, "keys": keys, "valid": valid})["y"]
    np.testing.assert_allclose(out, x + (keys * valid).sum(1)[:, None, None])
    assert calls == ["f_64x32_t8"] * 3  # the smallest bucket that holds 5 keys, once per item


def test_session_refuses_a_size_without_bucket_naming_the_buckets():
    session = BucketedSession("demo", ENTRY, masked_sum)
    feeds = {"x": np.zeros((1, 6, 2)), "keys": np.zeros((1, 2)), "valid": np.ones((1, 2), bool)}
    with pytest.raises(BucketError, match=r"6 image tokens .* exported: 64x32_t4, 64x32_t8"):
        session.run(feeds)
    feeds = {"x": np.zeros((1, 8, 2)), "keys": np.zeros((1, 9)), "valid": np.ones((1, 9), bool)}
    with pytest.raises(BucketError, match="a prompt of 9 tokens"):
        session.run(feeds)


def test_session_refuses_inputs_that_disagree():
    session = BucketedSession("demo", ENTRY, masked_sum)
    feeds = {"x": np.zeros((1, 8, 2)), "keys": np.zeros((1, 4)), "valid": np.ones((1, 3), bool)}
    with pytest.raises(ValueError, match="valid's prefix \\(3\\) disagrees with the other inputs"):
        session.run(feeds)
    with pytest.raises(ValueError, match="batch sizes are \\[1, 2\\]"):
        session.run({**feeds, "valid": np.ones((2, 4), bool)})


def test_a_function_holding_the_batch_runs_it_at_once_padded():
    """A static engine's one shape (batch 2, prefix 8): a batch of one is padded with a zero item,
    and torch tensors are padded where they live and joined by the backend's arrays."""
    import torch
    from qiedge.runtime.backends.cuda import DeviceArrays

    entry = {**ENTRY, "functions": {"static": {"batch": 2, "target": 8, "prefix": 8}}}
    calls = []

    def engine(function, feeds):
        calls.append({n: tuple(v.shape) for n, v in feeds.items()})
        assert isinstance(feeds["keys"], torch.Tensor) and isinstance(feeds["valid"], np.ndarray)
        total = (feeds["keys"] * torch.from_numpy(feeds["valid"])).sum(dim=1)
        return {"y": torch.from_numpy(feeds["x"]) + total[:, None, None]}

    session = BucketedSession("demo", entry, engine, DeviceArrays(torch.device("cpu")))
    rng = np.random.default_rng(1)
    for batch in (1, 2):
        x, keys = rng.standard_normal((batch, 8, 2)), torch.from_numpy(rng.standard_normal((batch, 5)))
        valid = np.ones((batch, 5), bool)
        out = session.run({"x": x, "keys": keys, "valid": valid})["y"]
        assert isinstance(out, torch.Tensor) and out.shape == (batch, 8, 2)
        np.testing.assert_allclose(out.numpy(), x + keys.numpy().sum(1)[:, None, None])
    assert calls == [{"x": (2, 8, 2), "keys": (2, 8), "valid": (2, 8)}] * 2  # one call per batch, padded
    with pytest.raises(BucketError, match="a prompt of 9 tokens"):
        session.run({"x": np.zeros((1, 8, 2)), "keys": torch.zeros((1, 9)), "valid": np.ones((1, 9), bool)})


def test_a_batch_larger_than_the_function_runs_in_parts():
    import torch
    from qiedge.runtime.backends.cuda import DeviceArrays

    entry = {**ENTRY, "functions": {"static": {"batch": 2, "target": 8, "prefix": 8}}}
    calls = []

    def engine(function, feeds):
        calls.append(feeds["x"].shape[0])
        return {"y": torch.from_numpy(masked_sum("f_64x32_t8", feeds)["y"])}

    session = BucketedSession("demo", entry, engine, DeviceArrays(torch.device("cpu")))
    rng = np.random.default_rng(2)
    x, keys, valid = rng.standard_normal((3, 8, 2)), rng.standard_normal((3, 6)), np.ones((3, 6), bool)
    out = session.run({"x": x, "keys": keys, "valid": valid})["y"]
    np.testing.assert_allclose(out.numpy(), x + keys.sum(1)[:, None, None])
    assert calls == [2, 2]  # items 0-1, then item 2 and a padded one
