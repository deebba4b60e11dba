import numpy as np
import pytest
from qiedge.core.scheduler import SchedulerConfig, model_timesteps, sigma_schedule


def test_spec_example_1024px_50_steps():
    """The spec's worked example: 4096 tokens, 50 steps -> 1.0, 0.9897, 0.9792, ... 0.0955, 0.0585, 0.02."""
    config = SchedulerConfig()
    assert config.mu(4096) == pytest.approx(0.69355, abs=1e-5)
    sigmas = sigma_schedule(config, 4096, steps=50)
    assert sigmas.dtype == np.float32 and len(sigmas) == 51
    np.testing.assert_allclose(sigmas[:3], [1.0, 0.9897, 0.9792], atol=1e-4)
    np.testing.assert_allclose(sigmas[-4:], [0.0955, 0.0585, 0.02, 0.0], atol=1e-4)


@pytest.mark.parametrize("tokens,steps,grid", [(64, 4, (1.0, 0.75, 0.5, 0.25)), (4096, 40, None), (16384, 7, None)])
def test_matches_diffusers_bit_for_bit(tokens, steps, grid):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

    config = SchedulerConfig()
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**{k: getattr(config, k) for k in config.__dataclass_fields__})
    sigmas_in = list(grid) if grid else list(np.linspace(1.0, 1 / steps, steps))
    mu = calculate_shift(tokens, 256, 8192, 0.5, 0.9)
    ref.set_timesteps(sigmas=sigmas_in, mu=mu)
    ours = sigma_schedule(config, tokens, steps=None if grid else steps, sample_sigmas=grid)
    np.testing.assert_array_equal(ours, ref.sigmas.numpy())
    np.testing.assert_array_equal(model_timesteps(ours), (ref.timesteps / 1000).numpy())


def test_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        sigma_schedule(SchedulerConfig(), 64, steps=0)
