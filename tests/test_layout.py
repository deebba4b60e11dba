import numpy as np
import pytest
from qiedge.core.layout import build_layout, rope_tables


def test_text_then_target_positions_and_padding():
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    layout = build_layout(np.zeros(3, bool), mask, [(1, 2, 4)])
    # Text advances one position per token (padding included); the target freezes the frame at 3
    # and centres rows on -1..0 and columns on -2..1.
    np.testing.assert_array_equal(layout.positions[:3], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(layout.positions[3:, 0], 3)
    np.testing.assert_array_equal(layout.positions[3:, 1], [-1] * 4 + [0] * 4)
    np.testing.assert_array_equal(layout.positions[3:, 2], [-2, -1, 0, 1] * 2)
    np.testing.assert_array_equal(layout.prefix_key_valid, mask)
    np.testing.assert_array_equal(layout.segment_ids, [-1, -1, -1])
    assert layout.num_target == 8 and layout.prefix_len == 3


def test_condition_image_replaces_its_slots():
    slots = np.array([0, 1, 1, 0], dtype=bool)  # 2 slots = 8 latent tokens of a 2x4 condition image
    layout = build_layout(slots, None, [(1, 2, 4), (1, 2, 2)])
    # joint prefix: text row 0, 8 condition rows (4.. after the 4 encoder rows), text row 3
    np.testing.assert_array_equal(layout.prefix_gather, [0, 4, 5, 6, 7, 8, 9, 10, 11, 3])
    np.testing.assert_array_equal(layout.segment_ids, [-1] + [0] * 8 + [-1])
    # frame axis: text 0, condition frame 1, then 1 + max(2, 4) = 5 for the last text, target at 6
    assert layout.positions[1, 0] == 1 and layout.positions[9, 0] == 5 and layout.positions[10, 0] == 6


def test_rejects_slot_count_that_does_not_fit_the_images():
    with pytest.raises(ValueError, match="image slots"):
        build_layout(np.array([0, 1, 0], dtype=bool), None, [(1, 4, 4), (1, 2, 2)])


def test_rope_tables_refuse_positions_outside_the_model():
    with pytest.raises(ValueError, match="RoPE positions"):
        rope_tables(np.array([[9000, 0, 0]]), (8, 12, 12))


def test_rope_inverse_frequencies_match_torch():
    torch = pytest.importorskip("torch")
    from qiedge.core.layout import rope_inverse_frequencies

    for dim in (8, 12, 16, 56):
        expected = 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float32).div(dim))
        # torch's AVX2 pow misrounds the odd value by an ulp; its AVX-512 kernels round as we do.
        np.testing.assert_array_max_ulp(rope_inverse_frequencies(dim), expected.numpy(), maxulp=1)
