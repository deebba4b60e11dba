import numpy as np
import pytest
from qiedge.core.noise import torch_randn


@pytest.mark.parametrize(
    "shape,seed", [((2, 1, 64, 4, 6), 0), ((1, 64, 8, 8), 1234), ((3, 7, 5), 7), ((16,), 2**40 + 3)]
)
def test_matches_torch_cpu_randn(shape, seed):
    torch = pytest.importorskip("torch")
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
    # torch's vectorised log/cos/sin round in the last ulp differently from NumPy's.
    np.testing.assert_allclose(torch_randn(shape, seed), expected, rtol=0, atol=1e-6)


def test_small_tensors_are_refused():
    with pytest.raises(ValueError, match="under 16"):
        torch_randn((3, 4), 0)
