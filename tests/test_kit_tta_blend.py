"""TTA averaging and blending: invariances that must hold exactly, and weights that find the better model."""
import numpy as np
import pytest
import torch
from torch import nn

from kernel_src import blend, tta
from kernel_src.thresholds import best_global


class FlipInvariant(nn.Module):
    """Logits from per-channel means and the mean of squares: unchanged by any flip of the image."""

    def __init__(self, channels: int = 3, labels: int = 4):
        super().__init__()
        self.head = nn.Linear(2 * channels, labels)

    def forward(self, x):
        x = x.float() / 255
        return self.head(torch.cat([x.mean((2, 3)), (x ** 2).mean((2, 3))], dim=1))


class Loader(list):
    """A stand-in loader: (images, targets, index) batches over a tensor, in a scrambled batch order."""

    def __init__(self, images, batch):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        super().__init__((images[i], torch.zeros(0), i) for i in order.split(batch))
        self.dataset = images


def test_flip_views_of_a_flip_invariant_model_equal_the_plain_prediction():
    torch.manual_seed(0)
    model = FlipInvariant()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    plain = tta.predict_batch(model, images, ["none"])
    flips = tta.predict_batch(model, images, ["none", "hflip", "vflip", "rot180"])
    torch.testing.assert_close(flips, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain, torch.sigmoid(model(images)), rtol=0, atol=0)


class Dense(nn.Module):
    def __init__(self, inputs: int, labels: int):
        super().__init__()
        self.head = nn.Linear(inputs, labels)

    def forward(self, x):
        return self.head(x.float().flatten(1))


def test_predict_places_rows_by_index_and_averages_probabilities():
    torch.manual_seed(1)
    model = Dense(3 * 8 * 8, 5)
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    out = tta.predict(model, Loader(images, 4), ["none", "hflip"], "cpu")
    with torch.no_grad():
        expected = (torch.sigmoid(model(images)) + torch.sigmoid(model(images.flip(-1)))) / 2
    # float32 sums differ with the batch size (4 here, 11 in `expected`) by a few ulps; a misplaced row or a
    # wrong average is off by far more
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_shift_views_move_content_and_fill_with_zeros():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)
    right = tta.VIEWS["shift_right"](x)
    assert (right[..., :, 0] == 0).all() and torch.equal(right[..., :, 1:], x[..., :, :-1])
    up = tta.VIEWS["shift_up"](x)
    assert (up[..., -1, :] == 0).all() and torch.equal(up[..., :-1, :], x[..., 1:, :])
    big = torch.ones(1, 1, 64, 64)
    assert tta.VIEWS["shift_left"](big)[..., -4:].sum() == 0 and tta.VIEWS["shift_left"](big)[..., :-4].min() == 1


def test_unknown_view_is_refused():
    with pytest.raises(ValueError, match="not known"):
        tta.views(["none", "spin"])


def test_blend_methods():
    a = np.array([[0.1, 0.9], [0.4, 0.2], [0.7, 0.5]])
    b = np.array([[0.3, 0.7], [0.2, 0.4], [0.9, 0.1]])
    np.testing.assert_allclose(blend.blend([a, b]), (a + b) / 2, atol=1e-7)
    np.testing.assert_allclose(blend.blend([a, b], "weighted", [3, 1]), 0.75 * a + 0.25 * b, atol=1e-7)
    np.testing.assert_allclose(blend.rank_scale(a), [[0, 1], [0.5, 0], [1, 0.5]])
    np.testing.assert_allclose(blend.rank_scale(np.array([[0.2], [0.2], [0.5]])), [[0.25], [0.25], [1]])
    np.testing.assert_allclose(blend.blend([a, 10 * b], "rank"), (blend.rank_scale(a) + blend.rank_scale(b)) / 2)
    with pytest.raises(ValueError, match="method"):
        blend.blend([a], "median")
    with pytest.raises(ValueError, match="shape"):
        blend.blend([a, b[:2]])
    with pytest.raises(ValueError, match="weights"):
        blend.blend([a, b], "weighted", [1, -1])


def test_weight_search_prefers_the_informative_model():
    rng = np.random.default_rng(0)
    y = rng.random((400, 6)) < 0.3
    good = np.clip(0.5 * y + rng.random(y.shape) * 0.5, 0, 1)      # separable at 0.5
    noise = rng.random(y.shape)                                      # knows nothing
    weights, f2 = blend.search_weights([noise, good], y)
    assert weights[1] > 0.8 and weights.sum() == pytest.approx(1)
    assert f2 == pytest.approx(best_global(blend.blend([noise, good], "weighted", weights), y)[1])
    assert f2 > best_global(blend.blend([noise, good]), y)[1]
    rank_weights, rank_f2 = blend.search_weights([noise, good], y, method="rank")
    assert rank_weights[1] > 0.8 and rank_f2 > 0.95


def _known_blend(n=1500, seed=0):
    """Three members whose true weighted mean (0.6, 0.3, 0.1) decides every label exactly."""
    rng = np.random.default_rng(seed)
    members = [rng.random((n, 4)) for _ in range(3)]
    truth = np.array([0.6, 0.3, 0.1])
    return members, truth, sum(w * m for w, m in zip(truth, members)) > 0.5


def test_weight_search_recovers_known_weights():
    members, truth, y = _known_blend()
    method, weights, tried = blend.search_blend(members, y)
    assert method == "weighted" and np.abs(np.array(weights) - truth).max() < 0.03
    assert tried["weighted"]["f2"] > 0.98 > tried["mean"]["f2"]
    assert set(tried) == {"mean", "weighted", "rank"} and tried["mean"]["weights"] == [0.333333] * 3


def test_rank_blend_wins_and_recovers_weights_when_a_member_is_on_another_scale():
    members, truth, y = _known_blend(seed=1)
    members[0] = members[0] ** 4  # the same order, another scale (another loss, a temperature)
    method, weights, tried = blend.search_blend(members, y)
    assert method == "rank" and np.abs(np.array(weights) - truth).max() < 0.03
    assert tried["rank"]["f2"] > tried["weighted"]["f2"]


def test_one_member_blends_as_itself():
    members, _, y = _known_blend(n=200)
    method, weights, tried = blend.search_blend(members[:1], y)
    assert method == "mean" and weights == [1.0] and tried["weighted"]["f2"] == tried["mean"]["f2"]
