"""Threshold search: known optima on synthetic OOF data, fallbacks, and the fast curves against brute force."""
import json

import numpy as np
import pytest

from kernel_src import thresholds as th
from kernel_src.metrics import fbeta_score


def _uniform(rng, lo, hi, shape):
    return rng.uniform(lo, hi, size=shape)


def test_global_threshold_finds_the_gap_and_beats_half():
    rng = np.random.default_rng(0)
    y = rng.random((400, 6)) < 0.3
    p = np.where(y, _uniform(rng, 0.26, 0.4, y.shape), _uniform(rng, 0.0, 0.2, y.shape))
    result = th.search(p, y, method="global")
    assert result.name == "global" and result.f2 == pytest.approx(1.0)
    assert 0.2 < result.rule.thresholds[0] <= 0.26 and len(set(result.rule.thresholds)) == 1
    assert result.candidates["fixed"] < 0.5
    assert th.best_global(p, y) == (pytest.approx(result.rule.thresholds[0]), pytest.approx(1.0))


def test_per_class_thresholds_find_each_class_gap():
    rng = np.random.default_rng(1)
    y = rng.random((500, 2)) < 0.4
    p = np.empty(y.shape)
    p[:, 0] = np.where(y[:, 0], _uniform(rng, 0.3, 0.4, 500), _uniform(rng, 0.0, 0.25, 500))
    p[:, 1] = np.where(y[:, 1], _uniform(rng, 0.75, 0.9, 500), _uniform(rng, 0.5, 0.65, 500))
    result = th.search(p, y)
    assert result.name.startswith("per_class") and result.f2 == pytest.approx(1.0)
    assert result.candidates["global"] < 1.0
    t0, t1 = result.rule.thresholds
    assert 0.25 < t0 <= 0.3 and 0.65 < t1 <= 0.75


def test_per_class_result_is_coordinatewise_optimal():
    rng = np.random.default_rng(2)
    y = rng.random((300, 5)) < 0.25
    p = np.clip(0.35 * y + rng.random(y.shape) * 0.65, 0, 1)
    result = th.search(p, y, method="per_class", min_labels=(0,))
    best = th.score(result.rule, p, y)
    for j in range(5):
        for t in th.GRID:
            moved = result.rule.thresholds.copy()
            moved[j] = t
            assert th.score(th.Rule(moved), p, y) <= best + 1e-12


@pytest.mark.parametrize("one_of", [(), ((4, 5, 6),)])
@pytest.mark.parametrize("need", [0, 1, 2])
def test_fast_global_curve_equals_brute_force(one_of, need):
    rng = np.random.default_rng(3)
    y = rng.random((200, 7)) < 0.2
    p = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    base = th.Rule.constant(7, one_of=one_of)
    free = base.free_columns()
    curve = th._global_curve(p[:, free], y[:, free], th._fixed_counts(p, y, base), th.GRID,
                             max(0, need - len(one_of)))
    brute = [th.score(th.Rule.constant(7, t, min_labels=need, one_of=one_of), p, y) for t in th.GRID]
    np.testing.assert_allclose(curve, brute, atol=1e-12)
    curve = th._global_curve(p[:, free], y[:, free], th._fixed_counts(p, y, base), th.GRID, 0, need + 1)
    brute = [th.score(th.Rule.constant(7, t, fallback=need + 1, one_of=one_of), p, y) for t in th.GRID]
    np.testing.assert_allclose(curve, brute, atol=1e-12)  # the top-k fallback's curve too


def test_top_k_wins_when_scales_differ_per_row():
    rng = np.random.default_rng(4)
    n, c = 300, 8
    y = np.zeros((n, c), dtype=bool)
    for row in y:
        row[rng.choice(c, 2, replace=False)] = True
    scale = rng.uniform(0.05, 1.0, size=(n, 1))             # every row's probabilities on its own scale
    p = scale * np.where(y, _uniform(rng, 0.8, 1.0, (n, c)), _uniform(rng, 0.0, 0.5, (n, c)))
    result = th.search(p, y)
    assert result.name == "top2" and result.f2 == pytest.approx(1.0)
    assert result.candidates["per_class"] < 1.0


def test_at_least_one_label_fallback():
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=bool)
    p = np.array([[0.30, 0.1, 0.1], [0.1, 0.35, 0.2], [0.1, 0.1, 0.25], [0.9, 0.8, 0.1]])
    rule = th.Rule.constant(3, 0.5, min_labels=1)
    np.testing.assert_array_equal(rule.apply(p), y)
    assert th.score(th.Rule.constant(3, 0.5), p, y) == pytest.approx(0.25)
    result = th.search(p, y, method="global")
    assert result.f2 == pytest.approx(1.0)


def test_one_of_groups_take_exactly_the_most_probable_label():
    p = np.array([[0.9, 0.2, 0.1, 0.3], [0.1, 0.6, 0.45, 0.55]])
    rule = th.Rule.constant(4, 0.5, one_of=((1, 2, 3),))
    np.testing.assert_array_equal(rule.apply(p), [[1, 0, 0, 1], [0, 1, 0, 0]])
    assert (th.Rule.constant(4, 0.5, top_k=1, one_of=((1, 2, 3),)).apply(p)[:, 1:].sum(axis=1) == 1).all()


def test_search_with_one_of_group():
    rng = np.random.default_rng(5)
    n = 400
    digits = rng.random((n, 10)) < 0.3
    digits[~digits.any(axis=1), 0] = True
    count = np.zeros((n, 4), dtype=bool)
    count[np.arange(n), np.minimum(digits.sum(axis=1), 4) - 1] = True
    y = np.concatenate([digits, count], axis=1)
    p = np.clip(0.45 * y + rng.random(y.shape) * 0.55, 0, 1)
    result = th.search(p, y, one_of=((10, 11, 12, 13),))
    assert result.rule.one_of == ((10, 11, 12, 13),)
    assert (result.rule.apply(p)[:, 10:].sum(axis=1) == 1).all()
    assert result.f2 >= max(result.candidates.values()) - 1e-12


def test_auto_never_loses_to_its_candidates_and_json_round_trips():
    rng = np.random.default_rng(6)
    y = rng.random((200, 5)) < 0.3
    p = np.clip(0.25 * y + rng.random(y.shape) * 0.75, 0, 1)
    result = th.search(p, y)
    assert result.f2 == max(result.candidates.values())
    assert result.f2 == pytest.approx(fbeta_score(y, result.rule.apply(p)))
    data = json.loads(json.dumps(result.to_dict()))
    again = th.Rule.from_dict(data["rule"])
    np.testing.assert_array_equal(again.apply(p), result.rule.apply(p))


def test_method_limits_the_candidates():
    rng = np.random.default_rng(7)
    y = rng.random((100, 4)) < 0.3
    p = rng.random(y.shape)
    assert th.search(p, y, method="fixed").name == "fixed"
    assert th.search(p, y, method="global").name.startswith("global")
    assert th.search(p, y, method="top_k", top_k=(2,)).name == "top2"
    with pytest.raises(ValueError, match="method"):
        th.search(p, y, method="magic")
    with pytest.raises(ValueError, match="shape"):
        th.search(p, y[:, :3])


# ---- per label group, context-aware, top-k fallback, the one_of constraint tried with and without --------

def test_per_group_thresholds_find_each_groups_gap():
    rng = np.random.default_rng(8)
    y = rng.random((400, 6)) < 0.35
    p = np.empty(y.shape)
    p[:, :3] = np.where(y[:, :3], _uniform(rng, 0.3, 0.4, (400, 3)), _uniform(rng, 0.0, 0.25, (400, 3)))
    p[:, 3:] = np.where(y[:, 3:], _uniform(rng, 0.75, 0.9, (400, 3)), _uniform(rng, 0.5, 0.65, (400, 3)))
    groups = {"culture": [0, 1, 2], "tag": [3, 4, 5]}
    result = th.search(p, y, method="per_group", groups=groups)
    assert result.name == "per_group" and result.f2 == pytest.approx(1.0)
    assert result.candidates["global"] < 0.95
    t = result.rule.thresholds
    assert len(set(t[:3])) == len(set(t[3:])) == 1 and 0.25 < t[0] <= 0.3 and 0.65 < t[3] <= 0.75
    assert "per_group" not in th.search(p, y, groups={"all": list(range(6))}).candidates  # one group: global


def test_context_aware_keeps_labels_near_the_rows_maximum():
    rng = np.random.default_rng(9)
    n, c = 400, 8
    y = np.zeros((n, c), dtype=bool)
    for row in y:
        row[rng.choice(c, rng.integers(1, 4), replace=False)] = True  # 1-3 labels: top-k cannot fit
    scale = rng.uniform(0.05, 1.0, size=(n, 1))                        # each row on its own scale
    p = scale * np.where(y, _uniform(rng, 0.85, 1.0, (n, c)), _uniform(rng, 0.0, 0.4, (n, c)))
    result = th.search(p, y)
    assert result.name == "context" and result.f2 == pytest.approx(1.0)
    assert 0.4 / 0.85 < result.rule.context <= 0.85 and max(v for k, v in result.candidates.items()
                                                            if k != "context") < 0.99
    again = th.Rule.from_dict(json.loads(json.dumps(result.to_dict()))["rule"])
    np.testing.assert_array_equal(again.apply(p), result.rule.apply(p))


def test_top_k_fallback_fills_only_rows_with_no_label():
    y = np.zeros((40, 6), dtype=bool)
    p = np.full(y.shape, 0.05)
    y[:20, 0] = True                       # sure rows: one label, well above 0.5
    p[:20, 0] = 0.9
    y[20:, 1:3] = True                     # unsure rows: two labels, their top two, below the sure rows' others
    p[20:] = 0.01
    p[20:, 1:3] = [0.04, 0.03]
    result = th.search(p, y, method="global", min_labels=(0, 1, 2))
    assert result.name == "global+fb2" and result.f2 == pytest.approx(1.0)
    assert result.candidates["global+min1"] < 1.0 and result.candidates["global+min2"] < 1.0
    assert result.rule.fallback == 2 and result.rule.apply(p)[:20].sum() == 20


def test_the_one_of_constraint_is_kept_only_where_it_scores_better():
    rng = np.random.default_rng(10)
    n = 300
    count = np.zeros((n, 3), dtype=bool)    # exactly one per row; its probability is the row's max, often low
    count[np.arange(n), rng.integers(0, 3, n)] = True
    colour = np.zeros((n, 3), dtype=bool)   # none or two per row: "exactly one" is wrong here
    colour[rng.random(n) < 0.5] = [True, True, False]
    y = np.concatenate([count, colour], axis=1)
    p = np.empty(y.shape)
    top = _uniform(rng, 0.2, 0.6, (n, 1))  # the true count's probability; the others 30-90 % of it
    p[:, :3] = np.where(count, top, top * _uniform(rng, 0.3, 0.9, (n, 3)))
    p[:, 3:] = np.where(colour, _uniform(rng, 0.6, 0.9, (n, 3)), _uniform(rng, 0.0, 0.3, (n, 3)))
    result = th.search_one_of(p, y, {"count": (0, 1, 2), "colour": (3, 4, 5)}, method="global",
                              min_labels=(0,), top_k=())  # no fallback: it could stand in for the constraint
    assert result.rule.one_of == ((0, 1, 2),)
    assert result.constraints["count"]["kept"] and not result.constraints["colour"]["kept"]
    assert result.constraints["count"]["with"] > result.constraints["count"]["without"]
    assert result.constraints["colour"]["without"] > result.constraints["colour"]["with"]
    assert result.f2 == pytest.approx(1.0)
    assert result.to_dict()["constraints"] == result.constraints


def test_a_kit_whose_beta_is_set_to_1_searches_and_scores_f1(tmp_path):
    """The preflight's metric warning says to score the competition's metric in the kit: for per-sample F1 that
    is BETA = 1.0 in the kit's metrics.py. A copy so edited searches the rule, the global threshold and the
    cross-fitted CV for F1 (sklearn's samples F1, brute force over the grid), not for F2."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    kit = tmp_path / "kernel_src"
    shutil.copytree(Path(th.__file__).parent, kit, ignore=shutil.ignore_patterns("__pycache__"))
    text = (kit / "metrics.py").read_text()
    (kit / "metrics.py").write_text(text.replace("BETA = 2.0 ", "BETA = 1.0 ", 1))
    script = """
import json, numpy as np
from sklearn.metrics import fbeta_score as sk
from kernel_src import metrics, thresholds as th
rng = np.random.default_rng(0)
y = rng.random((400, 8)) < 0.25
y[:, 0] |= ~y.any(axis=1)
p = np.clip(0.35 * y + rng.random(y.shape) * 0.65, 0, 1)
f = lambda b, t: sk(y, p >= t, beta=b, average="samples", zero_division=0)
result = th.search(p, y, method="global", min_labels=(0,))
t, score = th.best_global(p, y)
print(json.dumps({"name": metrics.NAME, "t": t, "score": score, "rule": result.f2,
                  "rule_sk": sk(y, result.rule.apply(p), beta=1, average="samples", zero_division=0),
                  "f1_best": max(f(1, g) for g in th.GRID),
                  "f2_best_t": float(th.GRID[np.argmax([f(2, g) for g in th.GRID])]),
                  "f1_at_t": f(1, t)}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["name"] == "F1"
    assert got["score"] == pytest.approx(got["f1_best"]) and got["f1_at_t"] == pytest.approx(got["f1_best"])
    assert got["rule"] == pytest.approx(got["rule_sk"]) and got["rule"] >= got["f1_best"] - 1e-9
    assert got["t"] > got["f2_best_t"]  # F1 weighs precision more than F2 does: a higher threshold wins


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_macro_and_micro_searches_are_exact_and_coordinatewise_optimal(average):
    """Under a macro or micro average the global threshold is the brute-force best over the grid, per class and
    per group no single label's (group's) grid value scores better, every candidate's score is exact, and rare
    labels with low probabilities get their own, lower thresholds (what macro F1 rewards)."""
    rng = np.random.default_rng(7)
    y = rng.random((300, 6)) < np.array([0.4, 0.4, 0.3, 0.05, 0.05, 0.1])
    scale = np.array([1.0, 1.0, 0.9, 0.3, 0.3, 0.5])
    p = np.clip((0.3 + 0.5 * y) * scale + rng.random(y.shape) * 0.3 * scale, 0, 1)
    score = lambda rule: fbeta_score(y, rule.apply(p), average=average)  # noqa: E731
    t, best = th.best_global(p, y, average=average)
    brute = [fbeta_score(y, p >= g, average=average) for g in th.GRID]
    assert best == pytest.approx(max(brute)) and fbeta_score(y, p >= t, average=average) == pytest.approx(best)
    groups = {"common": [0, 1, 2], "rare": [3, 4, 5]}
    result = th.search(p, y, groups=groups, average=average)
    for name, value in result.candidates.items():
        assert value >= 0
    assert result.f2 == pytest.approx(score(result.rule)) and result.f2 == max(result.candidates.values())
    per_class = th.search(p, y, method="per_class", min_labels=(0,), average=average)
    for j in range(6):
        for g in th.GRID:
            moved = per_class.rule.thresholds.copy()
            moved[j] = g
            assert score(th.Rule(moved)) <= per_class.f2 + 1e-12
    per_group = th.search(p, y, method="per_group", min_labels=(0,), groups=groups, average=average)
    for cols in groups.values():
        for g in th.GRID:
            moved = per_group.rule.thresholds.copy()
            moved[cols] = g
            assert score(th.Rule(moved)) <= per_group.f2 + 1e-12
    assert per_class.f2 > result.candidates["global"]
    if average == "macro":
        assert per_class.rule.thresholds[3:5].max() < per_class.rule.thresholds[:2].min()
    one_of = th.search(p, y, one_of=((0, 1),), average=average)
    assert one_of.f2 == pytest.approx(fbeta_score(y, one_of.rule.apply(p), average=average))


def test_a_kit_whose_average_is_set_to_macro_searches_and_scores_macro_f1(tmp_path):
    """The one edit the metric check names for a macro-F1 competition: AVERAGE = "macro" (and BETA = 1.0) in a
    copy of the kit's metrics.py makes the defaults of the search, the global threshold and the cross-fitted CV
    macro F1 (sklearn's, brute force over the grid); a value the kit does not know stops its import on one line."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    kit = tmp_path / "kernel_src"
    shutil.copytree(Path(th.__file__).parent, kit, ignore=shutil.ignore_patterns("__pycache__"))
    text = (kit / "metrics.py").read_text().replace("BETA = 2.0 ", "BETA = 1.0 ", 1)
    (kit / "metrics.py").write_text(text.replace('AVERAGE = "samples"', 'AVERAGE = "macro"', 1))
    script = """
import json, numpy as np
from sklearn.metrics import f1_score
from kernel_src import metrics, thresholds as th
rng = np.random.default_rng(0)
y = rng.random((400, 8)) < np.linspace(0.05, 0.4, 8)
y[0] = True
p = np.clip(0.35 * y + rng.random(y.shape) * 0.65, 0, 1)
f = lambda pred: f1_score(y, pred, average="macro", zero_division=0)
result = th.search(p, y, min_labels=(0,))
t, score = th.best_global(p, y)
cv = th.cross_fit_global(p, y, seed=3)
print(json.dumps({"name": metrics.NAME, "score": score, "best": max(f(p >= g) for g in th.GRID),
                  "rule": result.f2, "rule_sk": f(result.rule.apply(p)), "cv": cv["f2_in_sample"]}))
"""
    run = lambda: subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,  # noqa: E731
                                 timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    done = run()
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["name"] == "macro F1"
    assert got["score"] == pytest.approx(got["best"]) and got["cv"] == pytest.approx(got["best"])
    assert got["rule"] == pytest.approx(got["rule_sk"]) and got["rule"] >= got["best"] - 1e-9
    (kit / "metrics.py").write_text(text.replace('AVERAGE = "samples"', 'AVERAGE = "weighted"', 1))
    done = run()
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == (
        "ValueError: kernel_src/metrics.py: AVERAGE is 'weighted'; set one of samples, macro, micro")
