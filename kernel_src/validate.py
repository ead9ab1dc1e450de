"""Validation kernel entry: `main(config)` scores the trained models out of fold and searches the decision rule.

Every trained model the inputs hold (infer.find_models) predicts, with TTA, the validation fold it never
trained on. A member (one training config: a campaign's variant) gathers the OOF rows of all its folds (a
campaign's fold members); the rows every member covers are blended, every blend method tried (mean,
weighted, rank; weights searched on those rows) unless the config names one, and the decision rule is
searched on the blend (thresholds.py: every method, and each one_of constraint with and without).
Models trained on everything (fold -1) have no OOF rows and are left out here; infer still uses them.
With kit.data.holdout every model, fold -1 too, also predicts the held-out rows, and the submission as infer
makes it (each member's models averaged, the blend and the rule chosen on the OOF rows) is scored there.

Files written into working/:
    oof_scores.json   rows scored, per member its folds, rows and F2, the blend and every blend method's
                      F2 (`blends`), F2 at 0.5 and with the searched rule, overall and per label group
                      (precision and recall too), every candidate rule's F2 (`candidates`) and each one_of
                      constraint's F2 with and without (`constraints`); with kit.data.holdout, holdout_score:
                      the submission (members' models averaged, blend, rule) on the rows no fold trained on
    thresholds.json   what infer applies: the label ids, the rule, the blend (method, members, weights)
    oof_probs.npz     the blend's OOF probabilities (rows every member covers), kind oof: a teacher (teacher.py)

config["kit"] keys read here (besides the training kit's data/augment/amp/seed):
    augment.tta                       test-time views for the OOF predictions
    infer.checkpoint, infer.batch_size
    thresholds.method                 auto | fixed | global | per_class | top_k
    thresholds.fixed, .min_labels, .top_k, .one_of, .grid_step, .rounds
    blend.method, blend.weights       mean | weighted | rank (unset: all tried, the best kept); weights
                                      searched when not given

Local use: python -m kernel_src.validate kpack.yaml   [KPACK_KAGGLE_ROOT=... for the folders]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import blend, data, entrypoint, folds, infer, metrics, settings, teacher, thresholds
from .atomic import write_text as atomic_write_text
from kpack_runtime import inputs

SCORES = "oof_scores.json"
CV_SPLITS = 5  # row splits the post-processing search is cross-fitted over
CV_KIND = "validate: all folds' OOF, blend + searched rule cross-fitted over 5 row splits, TTA"
HOLDOUT_KIND = "holdout: rows no fold trained on, each member's models averaged, blend + rule chosen on OOF, TTA"


def _oof(config: dict, kit: settings.KitSettings, ev: infer.EvalSettings, log,
         folds_of: Optional[dict] = None) -> tuple[data.Table, dict, dict]:
    """The training table and, per member, its OOF probabilities over the table's rows (NaN where none) and its
    held-out rows' probabilities, its models averaged as infer averages them on the test (NaN on other rows; no
    entry for a member without a holdout); folds_of (when given) gets each member's folds."""
    root = data.data_root(kit, config)
    table = data.read_train(kit.data, root)
    row_of = {image_id: i for i, image_id in enumerate(table.ids)}
    trained = infer.find_models(ev.infer.checkpoint, log=log)
    if trained[0].labels.ids != table.labels.ids:
        raise ValueError(f"{trained[0].path} was trained on another label space than {root}'s")
    tables: dict[str, data.Table] = {}
    assigned: dict[tuple, np.ndarray] = {}
    oof: dict[str, np.ndarray] = {}
    held_rows: dict[str, np.ndarray] = {}
    held_parts: dict[str, list[np.ndarray]] = {}
    groups = infer.member_groups(trained)
    for name, members in groups.items():
        for model in members:
            md = model.kit.data
            key = _key(md)
            if key not in tables:
                tables[key] = table if key == _key(kit.data) else data.read_train(md, root)
            own = tables[key]
            split_key = (key, md.folds, model.kit.seed)
            if split_key not in assigned:  # the split the train kernel made
                assigned[split_key] = folds.assign(own.targets, md.folds, model.kit.seed, md.holdout)
            _, valid = folds.split(assigned[split_key], model.fold)
            held = folds.held_out(assigned[split_key])
            if model.fold < 0 and not len(held):
                log(f"[kpack] {model.path}: trained on every row (fold -1), so it has no OOF rows; skipped")
                continue
            scored = np.concatenate([valid, held])  # one predict call: it frees the model's state
            rows = np.asarray([row_of.get(own.ids[i], -1) for i in scored], dtype=np.int64)
            probs = infer.predict(model, [own.paths[i] for i in scored], kit.augment.tta, ev, kit)
            if len(held):  # a member's models share its holdout (only the fold differs), in the same order
                held_rows[name] = rows[len(valid):]
                held_parts.setdefault(name, []).append(probs[len(valid):])
            if model.fold < 0:
                log(f"[kpack] {name} fold -1: {len(held)} held-out rows from {model.path}")
                continue
            rows, probs = rows[:len(valid)], probs[:len(valid)]
            target = oof.setdefault(name, np.full(table.targets.shape, np.nan, dtype=np.float32))
            target[rows[rows >= 0]] = probs[rows >= 0]
            if folds_of is not None:
                folds_of.setdefault(name, []).append(model.fold)
            log(f"[kpack] {name} fold {model.fold}: {len(valid)} OOF rows"
                + (f" and {len(held)} held-out rows" if len(held) else "") + f" from {model.path}")
    if not oof:
        raise FileNotFoundError("no model with a validation fold among the inputs: nothing to score out of fold")
    held_out = {}
    for name, parts in held_parts.items():
        rows = held_rows[name]
        held_out[name] = np.full(table.targets.shape, np.nan, dtype=np.float32)
        held_out[name][rows[rows >= 0]] = np.mean(parts, axis=0)[rows >= 0]  # as infer averages a member
    return table, oof, held_out


def _holdout(names: list[str], held_out: dict, targets: np.ndarray, method: str, weights: list[float],
             rule) -> dict:
    """The submission's score on the rows no member's models trained on: the members' models averaged, the blend
    and the rule that validate chose on the OOF rows. Empty when a member has no holdout or none is shared."""
    if any(n not in held_out for n in names):
        return {}
    rows = np.all([~np.isnan(held_out[n]).any(axis=1) for n in names], axis=0)
    if not rows.any():
        return {}
    y = targets[rows].astype(bool)
    probs = blend.blend([held_out[n][rows] for n in names], method, weights)
    return {"holdout_score": metrics.fbeta_score(y, rule.apply(probs)), "holdout_rows": int(rows.sum()),
            "holdout_kind": HOLDOUT_KIND}


def _own_cv(oof: np.ndarray, targets: np.ndarray) -> float:
    """A member's CV on every row its folds cover (the blend scores only the rows all members cover)."""
    own = ~np.isnan(oof).any(axis=1)
    return thresholds.best_global(oof[own], targets[own].astype(bool))[1]


def _key(d: settings.DataSettings) -> str:
    return json.dumps(settings.to_dict(d, runtime=False), sort_keys=True)


def _blend(names: list[str], member_probs: list[np.ndarray], y: np.ndarray, ev: infer.EvalSettings,
           named: bool) -> tuple[str, list[float], dict]:
    """(method, weights, every method tried with its weights and F2). named: kit.blend.method was set."""
    method, given = ev.blend.method, ev.blend.weights
    if given and len(names) > 1:
        if len(given) != len(names):
            raise settings.SettingsError(f"kit.blend.weights: {len(given)} weights for {len(names)} members "
                                         f"({', '.join(names)})")
        weights = [float(w) / sum(given) for w in given]
        f2 = thresholds.best_global(blend.blend(member_probs, method, weights), y)[1]
        return method, weights, {method: {"weights": weights, "f2": f2}}
    best, weights, tried = blend.search_blend(member_probs, y, methods=(method,) if named else blend.METHODS)
    if len(names) == 1:
        best, weights = "mean", [1.0]
    return best, [float(w) for w in weights], tried


def run(config: dict, working: Optional[Path] = None, log=print) -> dict:
    """Score out of fold, search the rule, write oof_scores.json and thresholds.json; returns the scores."""
    kit, ev = infer.kit_settings(config)
    working = Path(working or inputs.working_dir())
    working.mkdir(parents=True, exist_ok=True)
    folds_of: dict[str, list[int]] = {}
    table, oof, held_out = _oof(config, kit, ev, log, folds_of)
    names = list(oof)
    covered = np.all([~np.isnan(p).any(axis=1) for p in oof.values()], axis=0)
    if not covered.any():
        raise ValueError(f"the members {', '.join(names)} share no OOF rows (each covers other folds)")
    y = table.targets[covered].astype(bool)
    member_probs = [oof[n][covered] for n in names]
    named = "method" in ((config.get("kit") or {}).get("blend") or {})
    method, weights, blends = _blend(names, member_probs, y, ev, named)
    probs = blend.blend(member_probs, method, weights)

    t = ev.thresholds
    grid = np.round(np.arange(t.grid_step, 1.0, t.grid_step), 6)
    groups = table.labels.groups
    one_of = dict(zip(t.one_of, infer.one_of_columns(t.one_of, table.labels)))
    search = dict(method=t.method, grid=grid, fixed=t.fixed, min_labels=tuple(t.min_labels), top_k=tuple(t.top_k),
                  rounds=t.rounds, groups=groups)
    result = thresholds.search_one_of(probs, y, one_of, **search)  # on every row: what infer applies

    def fitted(rows: np.ndarray):
        """The whole post-processing (blend method and weights, rule, one_of constraints) searched on `rows`."""
        m, w, _ = _blend(names, [p[rows] for p in member_probs], y[rows], ev, named)
        rule = thresholds.search_one_of(blend.blend([p[rows] for p in member_probs], m, w), y[rows], one_of,
                                        **search).rule
        return lambda held: rule.apply(blend.blend([p[held] for p in member_probs], m, w))

    pred = np.zeros(y.shape, dtype=bool)
    for held, part in thresholds.cross_fit(fitted, len(y), min(CV_SPLITS, len(y)), kit.seed):
        pred[held] = part
    scores = {
        # what the ledger records: every row scored by a blend and rule searched on the other splits' rows
        "cv_score": metrics.fbeta_score(y, pred), "cv_kind": CV_KIND, "cv_splits": min(CV_SPLITS, len(y)),
        "beta": metrics.BETA, "average": metrics.AVERAGE,  # every "f2" key here is this F-beta (a report reads it)
        "cv_score_in_sample": result.f2,  # the rule searched and scored on the same rows: optimistic
        # kit.data.holdout: the whole submission scored on rows it never saw (the blend's test score's estimate)
        **_holdout(names, held_out, table.targets, method, weights, result.rule),
        "rows": int(covered.sum()), "rows_total": len(table.ids),
        "members": {n: {"f2@0.5": metrics.fbeta_score(y, p >= 0.5), "f2_global": thresholds.best_global(p, y)[1],
                        "folds": sorted(folds_of.get(n, [])), "rows": int((~np.isnan(oof[n]).any(axis=1)).sum()),
                        "f2_own_rows": _own_cv(oof[n], table.targets)}
                    for n, p in zip(names, member_probs)},
        "blend": {"method": method, "weights": weights},
        "blends": blends,
        "at_0.5": metrics.report(y, probs >= 0.5, groups),
        "searched": {"rule": result.name, **metrics.report(y, result.rule.apply(probs), groups)},
        "candidates": result.candidates,
        "constraints": result.constraints,
        # F2 of the blend against one global threshold: the search's landscape, plotted by the run report
        "curve": {"thresholds": grid.tolist(), "f2": [metrics.fbeta_score(y, probs >= g) for g in grid]},
    }
    decision = {"labels": table.labels.ids, **result.to_dict(),
                "blend": {"method": method, "members": names, "weights": weights}}
    atomic_write_text(working / SCORES, json.dumps(scores, indent=1))
    atomic_write_text(working / infer.THRESHOLDS_FILE, json.dumps(decision, indent=1))
    teacher.write_probs(working / teacher.OOF_FILE, [table.ids[i] for i in np.flatnonzero(covered)],
                        table.labels.ids, teacher.blend_probs(member_probs, method, weights), "oof")
    log(f"[kpack] OOF rows {scores['rows']}/{scores['rows_total']}: {metrics.NAME} {scores['at_0.5']['f2']:.4f} "
        f"at 0.5, {result.f2:.4f} with rule {result.name} in-sample, "
        f"{scores['cv_score']:.4f} cross-fitted ({method} of {len(names)} member(s))"
        + (f"; the submission on {scores['holdout_rows']} held-out rows {scores['holdout_score']:.4f}"
           if "holdout_score" in scores else ""))
    return scores


def main(config: dict) -> dict:
    return entrypoint.one_line_errors(lambda: run(config), also=(ValueError,))


if __name__ == "__main__":
    entrypoint.from_command_line(main)
