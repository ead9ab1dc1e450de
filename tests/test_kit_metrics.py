"""The kit's metric: hand-computed cases, the empty-row rule, groups, and agreement with the local scorer."""
import numpy as np
import pytest

from kernel_src import metrics
from packager.localkaggle import scoring


def test_hand_computed_rows():
    y_true = np.array([[1, 1, 0, 0],    # tp 1, fn 1, fp 1: P = R = 1/2 -> F2 = 1/2
                       [1, 0, 0, 0],    # tp 1, fp 2: P = 1/3, R = 1 -> 5 * 1/3 / (4/3 + 1) = 5/7
                       [1, 1, 1, 1],    # tp 1, fn 3: P = 1, R = 1/4 -> 5 * 1/4 / (4 + 1/4) = 5/17
                       [0, 0, 1, 0]])   # no hit -> 0
    y_pred = np.array([[1, 0, 1, 0],
                       [1, 1, 1, 0],
                       [1, 0, 0, 0],
                       [1, 0, 0, 0]])
    rows = metrics.fbeta_rows(y_true, y_pred)
    np.testing.assert_allclose(rows, [1 / 2, 5 / 7, 5 / 17, 0.0])
    assert metrics.fbeta_score(y_true, y_pred) == pytest.approx((1 / 2 + 5 / 7 + 5 / 17) / 4)
    precision, recall = metrics.precision_recall(y_true, y_pred)
    assert precision == pytest.approx((1 / 2 + 1 / 3 + 1 + 0) / 4)
    assert recall == pytest.approx((1 / 2 + 1 + 1 / 4 + 0) / 4)


def test_beta_one_is_f1():
    y_true, y_pred = np.array([[1, 1, 0]]), np.array([[1, 0, 1]])
    assert metrics.fbeta_score(y_true, y_pred, beta=1) == pytest.approx(0.5)


def test_edge_rows():
    empty = np.zeros((1, 3), dtype=int)
    some = np.array([[0, 1, 0]])
    assert metrics.fbeta_score(empty, empty) == 1.0           # nothing to find, nothing claimed
    assert metrics.fbeta_score(some, empty) == 0.0            # missed everything
    assert metrics.fbeta_score(empty, some) == 0.0            # claimed what is not there
    assert metrics.fbeta_score(some, some) == 1.0
    assert metrics.precision_recall(empty, empty) == (1.0, 1.0)
    assert metrics.precision_recall(some, empty) == (0.0, 0.0)
    assert metrics.precision_recall(empty, some) == (0.0, 0.0)
    assert metrics.fbeta_score(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics.fbeta_score(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-d"):
        metrics.fbeta_score(np.zeros(3), np.zeros(3))


def test_agrees_with_the_local_kaggle_scorer():
    rng = np.random.default_rng(0)
    y_true = rng.random((300, 12)) < 0.15
    y_pred = rng.random((300, 12)) < 0.2
    y_true[:20], y_pred[:10] = False, False          # empty rows on one side and on both
    theirs = [scoring.fbeta({str(j) for j in np.flatnonzero(t)}, {str(j) for j in np.flatnonzero(p)})
              for t, p in zip(y_true, y_pred)]
    np.testing.assert_allclose(metrics.fbeta_rows(y_true, y_pred), theirs, rtol=0, atol=1e-12)


def test_report_per_group():
    y_true = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    y_pred = np.array([[1, 0, 0, 1], [0, 1, 0, 1]])
    out = metrics.report(y_true, y_pred, {"digit": [0, 1], "count": [2, 3]})
    assert out["groups"]["digit"] == {"f2": 1.0, "precision": 1.0, "recall": 1.0}
    assert out["groups"]["count"]["f2"] == pytest.approx(0.5)
    assert out["f2"] == pytest.approx((metrics.fbeta_rows(y_true[:1], y_pred[:1])[0] + 1) / 2)
    assert "groups" not in metrics.report(y_true, y_pred)


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_macro_and_micro_agree_with_sklearn_and_the_local_kaggle(average):
    """Macro scores the labels some truth or prediction holds (an all-empty label is left out, one only predicted
    scores 0), as sklearn does on those columns and as the local Kaggle's f1-macro/f1-micro do on label strings."""
    from sklearn.metrics import fbeta_score as sk, precision_score, recall_score

    rng = np.random.default_rng(4)
    y_true, y_pred = rng.random((200, 9)) < 0.2, rng.random((200, 9)) < 0.25
    y_true[:, 7], y_pred[:, 7] = False, False          # in no truth and no prediction: not in the label set
    y_true[:, 8] = False                                # only predicted: scores 0
    present = [j for j in range(9) if j != 7]
    for beta in (1.0, 2.0):
        expected = sk(y_true[:, present], y_pred[:, present], beta=beta, average=average, zero_division=0)
        assert metrics.fbeta_score(y_true, y_pred, beta=beta, average=average) == pytest.approx(expected)
    assert metrics.precision_recall(y_true, y_pred, average) == (
        pytest.approx(precision_score(y_true[:, present], y_pred[:, present], average=average, zero_division=0)),
        pytest.approx(recall_score(y_true[:, present], y_pred[:, present], average=average, zero_division=0)))
    labels = lambda m: [frozenset(str(j) for j in np.flatnonzero(r)) for r in m]  # noqa: E731
    assert scoring.fbeta_labels(labels(y_true), labels(y_pred), 1.0, average) == pytest.approx(
        metrics.fbeta_score(y_true, y_pred, beta=1.0, average=average))
    nothing = np.zeros((3, 4), dtype=bool)
    assert metrics.fbeta_score(nothing, nothing, average=average) == 1.0
    with pytest.raises(ValueError, match="average"):
        metrics.fbeta_columns(np.ones(2), np.ones(2), np.ones(2), average="weighted")
