"""Honest CV: the train kernel's threshold cross-fitted over two halves of the fold, the best epoch chosen on
half A while half B's score is recorded, and validate's whole post-processing search cross-fitted."""
import numpy as np

from kernel_src import thresholds
from kernel_src.metrics import fbeta_score


def _noise(seed, n=300, labels=30):
    """Probabilities with no signal: any threshold the search picks fits noise only."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, labels)), rng.uniform(size=(n, labels)) < 0.1


def test_cross_fitted_threshold_is_below_the_in_sample_one_and_near_a_held_out_score():
    fits, held = [], []
    for seed in range(20):  # small noisy folds: the in-sample search fits each fold's noise
        probs, y = _noise(seed, n=40, labels=4)
        fit = thresholds.cross_fit_global(probs, y, seed=seed)
        held_probs, held_y = _noise(seed + 1000, n=2000, labels=4)
        fits.append((fit["f2"], fit["f2_in_sample"]))
        held.append(fbeta_score(held_y, held_probs >= fit["threshold"]))
    cross, in_sample = np.mean(fits, axis=0)
    assert cross < in_sample - 0.01
    assert abs(cross - np.mean(held)) < abs(in_sample - np.mean(held))


def test_halves_are_a_deterministic_partition():
    a, b = thresholds.halves(11, 5)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(11))
    assert [x.tolist() for x in thresholds.halves(11, 5)] == [a.tolist(), b.tolist()]
    assert thresholds.halves(11, 6)[0].tolist() != a.tolist()


def test_per_class_rule_cross_fitted_is_lower_than_in_sample_on_noise():
    probs, y = _noise(2, n=200, labels=20)

    def fitted(rows):
        rule = thresholds.search(probs[rows], y[rows], method="per_class").rule
        return lambda held: rule.apply(probs[held])

    pred = np.zeros(y.shape, dtype=bool)
    for held, part in thresholds.cross_fit(fitted, len(y), 5, seed=0):
        pred[held] = part
    in_sample = thresholds.search(probs, y, method="per_class").f2
    assert fbeta_score(y, pred) < in_sample - 0.01


def test_the_epoch_choosing_score_sees_none_of_half_bs_labels():
    """Half B is recorded as the CV, so the score that chooses the epoch must not move when B's labels do
    (f2_a, scored on A with B's threshold, does: it would leak B into the choice)."""
    probs, y = _noise(3, n=200, labels=10)
    probs = np.clip(probs * 0.5 + y * 0.4, 0, 1)  # some signal, so the thresholds matter
    _, b = thresholds.halves(len(y), 7)
    other = y.copy()
    other[b] = np.random.default_rng(9).uniform(size=(len(b), y.shape[1])) < 0.3
    one, two = thresholds.cross_fit_global(probs, y, seed=7), thresholds.cross_fit_global(probs, other, seed=7)
    assert one["f2_a_alone"] == two["f2_a_alone"]
    assert one["f2_a"] != two["f2_a"] and one["f2_b"] != two["f2_b"]
