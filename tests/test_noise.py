import numpy as np
import pytest
from qiedge.core.noise import torch_randn


@pytest.mark.parametrize(
    "shape,seed", [((2, 1, 64, 4, 6), 0), ((1, 64, 8, 8), 1234), ((3, 7, 5), 7), ((16,), 2**32 - 1)]
)
def test_matches_torch_cpu_randn(shape, seed):
    torch = pytest.importorskip("torch")
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
    # torch's vectorised log/cos/sin round in the last ulp differently from NumPy's.
    np.testing.assert_allclose(torch_randn(shape, seed), expected, rtol=0, atol=1e-6)


def test_small_tensors_are_refused():
    with pytest.raises(ValueError, match="under 16"):
        torch_randn((3, 4), 0)


def test_seeds_are_the_32_bits_torch_reads():
    """torch's CPU generator seeds its mt19937 with the seed's low 32 bits, so a larger seed
    repeats a smaller one: such seeds are refused rather than silently aliased."""
    torch = pytest.importorskip("torch")
    large, small = (torch.randn(16, generator=torch.Generator().manual_seed(s)) for s in (2**40 + 3, 3))
    assert torch.equal(large, small)
    with pytest.raises(ValueError, match="seed 4294967296 is outside 0-4294967295"):
        torch_randn((16,), 2**32)
