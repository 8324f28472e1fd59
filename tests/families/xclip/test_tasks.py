"""X-CLIP's Shop World tasks: frame sampling (uniform = the middle frame of each segment,
random = one frame inside each segment, the same frames for the same seed), the 16-frame
task through it, and the retrieval task's examples."""
import numpy as np
import pytest
import seqio

import plug_jax.tasks  # noqa: F401  (registers the tasks)
from plug_jax.data import configure_tensorflow
from plug_jax.data.media import sample_indices

tf = configure_tensorflow()
from plug_jax.tasks import xclip as xclip_tasks  # noqa: E402


def _videos(n_frames, count=6):
    """Videos whose frame k is filled with k (so sampled indices can be read back)."""
    frames = np.broadcast_to(np.arange(n_frames, dtype=np.float32)[:, None, None, None],
                             (n_frames, 2, 2, 3))
    return tf.data.Dataset.from_tensors({"frames": frames, "id": 0}).repeat(count)


def _picked(ds):
    return [ex["frames"][:, 0, 0, 0].astype(int).tolist() for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("n, t", [(16, 8), (13, 5), (8, 8)])
def test_uniform_takes_the_middle_of_each_segment(n, t):
    got = _picked(xclip_tasks.sample_frames(_videos(n, 2), num_frames=t, mode="uniform"))
    assert got == [sample_indices(n, t).tolist()] * 2
    assert got[0] == sorted(got[0]) and len(set(got[0])) == t


def test_random_stays_in_its_segment_and_repeats_for_a_seed():
    def run(seed):
        with seqio.utils.map_seed_manager(seed):
            return _picked(xclip_tasks.sample_frames(_videos(16, 50), num_frames=8,
                                                     mode="random"))
    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    for idx in a:
        assert all(2 * i <= k < 2 * i + 2 for i, k in enumerate(idx))  # segment i is 2i, 2i+1
    # every frame of every segment is drawn at some point (not always the same one)
    assert {k for idx in a for k in idx} == set(range(16))
    with pytest.raises(ValueError, match="unknown frame sampling 'middle'"):
        xclip_tasks.sample_frames(_videos(16), num_frames=8, mode="middle")


def test_too_few_frames_fail_with_the_count():
    with pytest.raises(tf.errors.InvalidArgumentError, match="fewer frames than the 8"):
        _picked(xclip_tasks.sample_frames(_videos(4, 1), num_frames=8, mode="uniform"))


def test_retrieval_tasks_give_frames_and_captions():
    task = seqio.get_mixture_or_task(xclip_tasks.VIDEO_RETRIEVAL_EN)
    ex = next(task.get_dataset({"targets": 64}, split="validation", shuffle=False)
              .as_numpy_iterator())
    assert ex["frames"].shape == (8, 64, 64, 3) and ex["frames"].dtype == np.float32
    assert ex["targets"][-1] == 1 and len(ex["targets"]) <= 64
    caption = task.output_features["targets"].vocabulary.decode(ex["targets"][:-1].tolist())
    assert caption.startswith("In the video, ") and " first " in caption
    # 16 frames sampled to 8 uniformly are frames 1, 3, ..., 15 of the 16-frame video
    full = seqio.get_mixture_or_task(xclip_tasks.VIDEO_RETRIEVAL_16F_EN)
    eight = seqio.get_mixture_or_task("xclip_shop_video_retrieval_16to8_uniform_en_v1")
    a = next(full.get_dataset({"targets": 64}, split="validation", shuffle=False)
             .as_numpy_iterator())
    b = next(eight.get_dataset({"targets": 64}, split="validation", shuffle=False)
             .as_numpy_iterator())
    assert a["frames"].shape[0] == 16 and b["frames"].shape[0] == 8
    np.testing.assert_array_equal(b["frames"], a["frames"][1::2])
    np.testing.assert_array_equal(a["targets"], b["targets"])
