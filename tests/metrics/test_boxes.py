"""Box IoU / GIoU / grounding accuracy against values worked out by hand."""
import numpy as np
import pytest

from plug_jax.metrics import boxes


def test_iou_hand_computed():
    # [0,0,4,4] (area 16) and [2,2,6,6] (area 16): overlap 2x2 = 4, union 28
    assert boxes.iou([0, 0, 4, 4], [2, 2, 6, 6]) == pytest.approx(4 / 28)
    # identical boxes
    assert boxes.iou([1, 2, 5, 9], [1, 2, 5, 9]) == pytest.approx(1.0)
    # one inside the other: [0,0,10,10] (100) contains [0,0,5,5] (25) -> 25/100
    assert boxes.iou([0, 0, 10, 10], [0, 0, 5, 5]) == pytest.approx(0.25)
    # touching edges (exclusive ends): no shared pixel
    assert boxes.iou([0, 0, 4, 4], [4, 0, 8, 4]) == 0.0
    # an empty (inverted) box overlaps nothing
    assert boxes.iou([5, 5, 3, 3], [0, 0, 10, 10]) == 0.0
    # both empty: union 0 -> 0, not nan
    assert boxes.iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0


def test_giou_hand_computed():
    # the overlapping pair: enclosing [0,0,6,6] = 36, union 28 -> 4/28 - 8/36
    assert boxes.giou([0, 0, 4, 4], [2, 2, 6, 6]) == pytest.approx(4 / 28 - 8 / 36)
    # disjoint [0,0,2,2] and [4,0,6,2]: IoU 0, union 8, enclosing [0,0,6,2] = 12 -> -4/12
    assert boxes.giou([0, 0, 2, 2], [4, 0, 6, 2]) == pytest.approx(-1 / 3)
    # identical -> 1
    assert boxes.giou([3, 3, 7, 8], [3, 3, 7, 8]) == pytest.approx(1.0)
    # far apart: tends to -1. [0,0,1,1] and [99,99,100,100]: union 2, enclosing 10000
    assert boxes.giou([0, 0, 1, 1], [99, 99, 100, 100]) == pytest.approx(-(10000 - 2) / 10000)


def test_elementwise_over_leading_axes_and_accuracy():
    a = np.array([[[0, 0, 4, 4], [0, 0, 10, 10]], [[0, 0, 2, 2], [1, 1, 3, 3]]])
    b = np.array([[[2, 2, 6, 6], [0, 0, 5, 5]], [[4, 0, 6, 2], [1, 1, 3, 3]]])
    want = np.array([[4 / 28, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(boxes.iou(a, b), want)
    # IoUs 4/28, 0.25, 0, 1 -> one of four reaches 0.5
    assert boxes.grounding_accuracy(a.reshape(-1, 4), b.reshape(-1, 4)) == 0.25
    # threshold 0.25 counts the contained box too (IoU exactly 0.25)
    assert boxes.grounding_accuracy(a.reshape(-1, 4), b.reshape(-1, 4), 0.25) == 0.5
    # IoU exactly 0.5: [0,0,4,2] vs [0,0,4,4] -> 8/16
    assert boxes.grounding_accuracy([[0, 0, 4, 2]], [[0, 0, 4, 4]]) == 1.0
    assert boxes.grounding_accuracy(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0


def test_jax_numpy_gives_the_same_values():
    import jax.numpy as jnp
    a = np.array([[0, 0, 4, 4], [0, 0, 2, 2], [5, 5, 3, 3]], np.float32)
    b = np.array([[2, 2, 6, 6], [4, 0, 6, 2], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(np.asarray(boxes.giou(a, b, xp=jnp)), boxes.giou(a, b),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(boxes.iou(a, b, xp=jnp)), boxes.iou(a, b),
                               rtol=1e-6, atol=1e-6)
