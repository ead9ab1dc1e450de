"""Knowledge distillation and pseudo-labelling from a teacher's predictions (a blend's: validate and infer write them).

The file (one format for both): an .npz with `ids` (image ids), `classes` (label ids, in order), `probs`
(float32, rows x classes) and `kind`: "oof" (validate's oof_probs.npz: out-of-fold rows every member covers)
or "test" (infer's test_probs.npz: the blend before the decision rule). A rank blend's file holds the
members' probabilities under the same weights (ranks are not probabilities).

    kit.teacher: {oof: oof_probs.npz, test: test_probs.npz, weight: 0.5, pseudo_threshold: 0.9, pseudo_max: 0}

- distillation (`oof`): a training row's target is (1 - weight) * y + weight * p. Only out-of-fold
  predictions are taken (in-sample ones would leak the labels); training rows the file lacks keep y, and the
  validation fold is always scored on the hard labels.
- pseudo-labelling (`test` + pseudo_threshold): test rows whose every class is confident (p >= t or
  p <= 1 - t) join the training rows, never the validation fold, with the same formula where the teacher's
  own labels at 0.5 stand in for y: weight 0 is classic hard pseudo-labels, 1 pure soft targets. Up to
  pseudo_max rows (0: all), the most confident first (a row's least confident class), ties in file order;
  none confident is refused in one line, before training (a run named pseudo-labelled that had none).
The files are found like kit.model.weights (a path, or a name among the inputs); their sha256 joins the
training hash, so a resumed run with another teacher is refused, and the targets are a pure function of them.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from .settings import SettingsError, TeacherSettings

if TYPE_CHECKING:  # the annotation only: prepare() imports data where it uses it
    from .data import ImageRef

KINDS = ("oof", "test")
OOF_FILE, TEST_FILE = "oof_probs.npz", "test_probs.npz"


def active(t: TeacherSettings) -> bool:
    return t.oof is not None or t.test is not None


# ------------------------------------------------------------------------------------------ the file

def write_probs(path: Path, ids: Sequence[str], classes: Sequence[str], probs: np.ndarray, kind: str) -> None:
    """The teacher file, written whole or not at all."""
    from . import atomic

    assert kind in KINDS
    with atomic.replacing(Path(path)) as f:
        np.savez_compressed(f, ids=np.asarray(list(ids), dtype=str), classes=np.asarray(list(classes), dtype=str),
                            probs=np.asarray(probs, dtype=np.float32), kind=np.asarray(kind))


@dataclass
class Probs:
    path: Path
    ids: list[str]
    classes: list[str]
    probs: np.ndarray
    kind: str
    sha256: str


def resolve(ref: str, where: str) -> Path:
    """A path, or the one file of that name among the inputs (validate's or infer's output mounted)."""
    from kpack_runtime import inputs

    path = Path(ref).expanduser()
    if path.is_file():
        return path
    hits = inputs.find_files(path.name)
    # the same bytes in two inputs (an output and a dataset made from it) are one file
    distinct = {hashlib.sha256(hit.read_bytes()).hexdigest(): hit for hit in reversed(hits)}
    if len(distinct) == 1:
        return hits[0]
    if hits:
        raise SettingsError(f"{where}: {len(distinct)} different files named {path.name} in the inputs "
                            f"({', '.join(map(str, sorted(distinct.values())[:3]))}): give the path of one")
    raise FileNotFoundError(f"{where}: {ref!r} is neither a file nor found in the kernel inputs (add the validate/"
                            "infer kernel that wrote it to kernels.train.sources.kernels)")


def load(ref: str, kind: str, where: str) -> Probs:
    path = resolve(ref, where)
    raw = path.read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:  # the bytes hashed, read once
            ids, classes = [str(i) for i in z["ids"]], [str(c) for c in z["classes"]]
            probs, got = np.asarray(z["probs"], dtype=np.float32), str(z["kind"])
    except (KeyError, ValueError, OSError) as exc:
        raise SettingsError(f"{where}: {path} is not a teacher file (ids, classes, probs, kind): {exc}") from None
    if got != kind:
        why = ("training rows need out-of-fold predictions (validate's oof_probs.npz): in-sample teacher "
               "predictions would leak the labels" if kind == "oof" else "pseudo rows come from test predictions "
               "(infer's test_probs.npz)")
        raise SettingsError(f"{where}: {path} holds kind {got!r} predictions; {why}")
    if probs.shape != (len(ids), len(classes)) or not np.isfinite(probs).all():
        raise SettingsError(f"{where}: {path}: probs of shape {probs.shape} for {len(ids)} ids x {len(classes)} "
                            "classes, or not finite")
    return Probs(path, ids, classes, probs, got, hashlib.sha256(raw).hexdigest())


def _check_classes(p: Probs, label_ids: list[str], where: str) -> None:
    if p.classes != list(label_ids):
        first = next((j for j, (a, b) in enumerate(zip(p.classes, label_ids)) if a != b), min(len(p.classes),
                                                                                            len(label_ids)))
        raise SettingsError(f"{where}: {p.path} has {len(p.classes)} classes, the training table {len(label_ids)}; "
                            f"they differ first at column {first}: the teacher was trained on another label space")


# ------------------------------------------------------------------------------------------ targets

def distill(targets: np.ndarray, ids: Sequence[str], p: Probs, weight: float) -> tuple[np.ndarray, int]:
    """(1 - weight) * y + weight * p for the rows `ids` the file covers (float32); rows it lacks keep y."""
    row = {image_id: i for i, image_id in enumerate(p.ids)}
    out = targets.astype(np.float32)
    have = np.asarray([image_id in row for image_id in ids], dtype=bool)
    at = np.asarray([row[i] for i, h in zip(ids, have) if h], dtype=np.int64)
    out[have] = (1.0 - weight) * out[have] + weight * p.probs[at]
    return out, int(have.sum())


def margins(probs: np.ndarray) -> np.ndarray:
    """Each row's confidence: max(p, 1 - p) of its least confident class."""
    return np.maximum(probs, 1.0 - probs).min(axis=1) if probs.size else np.ones(len(probs))


def confident(probs: np.ndarray, threshold: float, limit: int = 0) -> np.ndarray:
    """Rows whose every p >= threshold or <= 1 - threshold, the most confident first up to `limit` (0: all),
    returned in file order."""
    margin = margins(probs)
    rows = np.flatnonzero(margin >= threshold)
    if limit and len(rows) > limit:
        rows = rows[np.argsort(-margin[rows], kind="stable")[:limit]]
    return np.sort(rows)


def pseudo_targets(probs: np.ndarray, weight: float) -> np.ndarray:
    return ((1.0 - weight) * (probs >= 0.5) + weight * probs).astype(np.float32)


# ------------------------------------------------------------------------------------------ the engine's view

@dataclass
class Taught:
    paths: list[ImageRef]      # the table's paths, then the pseudo rows' test images
    rows: np.ndarray           # the training rows, indices into paths
    targets: np.ndarray        # float32 targets of `rows`
    sha256: list[str]          # the files', in (oof, test) order
    distilled: int = 0
    pseudo: int = 0

    def hash(self, base: str) -> str:
        """The training hash with the files' contents in it."""
        return hashlib.sha256(":".join([base, *self.sha256]).encode()).hexdigest()[:16]


def prepare(kit, root: Path, table, train_idx: np.ndarray, log: Callable[[str], None] = print) -> Taught:
    """The training rows, their targets and the paths they index, with kit.teacher applied."""
    from . import data

    t: TeacherSettings = kit.teacher
    train_ids = [table.ids[i] for i in train_idx]
    targets = table.targets[train_idx].astype(np.float32)
    paths, rows, shas, distilled, pseudo = list(table.paths), np.asarray(train_idx, dtype=np.int64), [], 0, 0
    if t.oof is not None:
        p = load(t.oof, "oof", "kit.teacher.oof")
        _check_classes(p, table.labels.ids, "kit.teacher.oof")
        known = set(table.ids)
        stray = [i for i in p.ids if i not in known]
        if stray:
            raise SettingsError(f"kit.teacher.oof: {p.path} has {len(stray)} ids the training table lacks (first: "
                                f"{stray[0]!r}): a teacher of another table (kit.data.max_samples?)")
        targets, distilled = distill(targets, train_ids, p, t.weight)
        shas.append(p.sha256)
    if t.test is not None:
        p = load(t.test, "test", "kit.teacher.test")
        _check_classes(p, table.labels.ids, "kit.teacher.test")
        test = data.read_test(kit.data, root, table.labels)
        path_of = dict(zip(test.ids, test.paths))
        stray = [i for i in p.ids if i not in path_of]
        if stray:
            raise SettingsError(f"kit.teacher.test: {p.path} has {len(stray)} ids that are not test images "
                                f"(first: {stray[0]!r})")
        in_train = set(table.ids)
        chosen = [r for r in confident(p.probs, t.pseudo_threshold, 0) if p.ids[r] not in in_train]
        if t.pseudo_max and len(chosen) > t.pseudo_max:
            keep = confident(p.probs[chosen], t.pseudo_threshold, t.pseudo_max)
            chosen = [chosen[k] for k in keep]
        if not chosen:  # pseudo-labelling asked for and none given: refused rather than trained as a plain run
            best = margins(p.probs).max(initial=0.0)
            raise SettingsError(f"kit.teacher.pseudo_threshold: no test row of {p.path} has every class at p >= "
                                f"{t.pseudo_threshold} or <= {1 - t.pseudo_threshold:.2g} (the most confident row's "
                                f"least confident class: {best:.3f}; focal loss keeps probabilities nearer 0.5 than "
                                f"BCE); lower it, or set pseudo_threshold: 0.5 with pseudo_max: N for the N most "
                                f"confident rows")
        chosen = np.asarray(chosen, dtype=np.int64)
        rows = np.concatenate([rows, len(paths) + np.arange(len(chosen))])
        paths += [path_of[p.ids[r]] for r in chosen]
        targets = np.concatenate([targets, pseudo_targets(p.probs[chosen], t.weight)]) if len(chosen) else targets
        pseudo = len(chosen)
        shas.append(p.sha256)
    log(f"[kpack] teacher: {distilled} of {len(train_idx)} training rows distilled (weight {t.weight}), "
        f"{pseudo} pseudo rows from test (threshold {t.pseudo_threshold}, max {t.pseudo_max or 'all'})")
    return Taught(paths, rows, targets, shas, distilled, pseudo)


def blend_probs(member_probs: list[np.ndarray], method: str, weights: Optional[list[float]]) -> np.ndarray:
    """The blend as probabilities: a rank blend's weights over the members' probabilities."""
    from . import blend

    return blend.blend(member_probs, "weighted" if method == "rank" else method, weights)
