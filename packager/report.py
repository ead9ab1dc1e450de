"""A run's report: PNG plots and one self-contained report.html in its output folder (runs/<slug>/v<N>/).

Written when a run's output is downloaded (watch.download), and by `kpack report [KIND]` for the newest run
with an output. Everything comes from what the kit writes and the session's log, whatever of it is there:

    training loss and lr per step   the log's `[kpack] epoch e/E step s/S loss L lr X` lines (every session
                                    of a chain, each from its own folder), sessions' ends as vertical lines
    validation curves per epoch     metrics.json `history` (loss, F-beta at 0.5 and at the searched threshold)
    F-beta against threshold,       oof.npy + oof.csv + classes.json (train), scored here with the kit's rule
      per-class and per-group P/R   (the kit's F-beta: per sample, macro or micro; per class: over its column)
    (the kit's beta and average, F2 per sample unless its metrics.py says otherwise, from metrics.json or
     oof_scores.json `beta` and `average`)
    each threshold method's result  oof_scores.json `candidates`, `curve`, `at_0.5`, `searched` (validate)
      and the blend weights         oof_scores.json `blend` and `members`
    the time budget                 state.json `session` (start-up, training steps, validation, checkpoint
                                    saves, the final save, the rest, the unused tail of the session limit)
    the submission                  submission.csv (infer): rows, labels per row, the most frequent labels

Images are embedded as data URIs, so report.html is one file that opens anywhere; the PNGs lie beside it.
A report that cannot be made never fails the download or the run: one warning line.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from pathlib import Path

from packager import preflight

REPORT = "report.html"
STEP_LINE = re.compile(r"\[kpack\] epoch (\d+)/(\d+) step (\d+)/(\d+) loss ([-\d.eE+naif]+) lr ([-\d.eE+]+)")
MAX_BARS = 40  # per-class plots show the weakest and strongest labels beyond this


# --------------------------------------------------------------------------------------------- reading

def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log_text(folder: Path) -> str:
    """The session's log as plain text: the decoded <slug>.txt beside the raw <slug>.log, else decoded here."""
    from packager import logs

    for raw in sorted(folder.glob("*.log")):
        text = folder / f"{raw.stem}.txt"
        if text.is_file():
            return text.read_text(errors="replace")
        return logs.plain(logs.decode(raw.read_text(errors="replace")))
    return ""


def step_lines(text: str) -> list[dict]:
    out = []
    for m in STEP_LINE.finditer(text):
        try:
            out.append({"epoch": int(m[1]), "step": int(m[3]), "total_steps": int(m[4]), "loss": float(m[5]),
                        "lr": float(m[6])})
        except ValueError:
            continue
    return out


def _fbeta(tp, fp, fn, beta: float, empty: float) -> "np.ndarray":
    """F-beta from count arrays; `empty` where there is nothing to find and nothing claimed."""
    import numpy as np

    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return np.where(den > 0, (1 + b2) * tp / np.where(den > 0, den, 1), empty)


def _counts(y: "np.ndarray", pred: "np.ndarray", axis: int) -> tuple:
    """tp, fp, fn summed along `axis` (1: per row, 0: per label)."""
    tp = (y & pred).sum(axis).astype(float)
    return tp, pred.sum(axis) - tp, y.sum(axis) - tp


def f2_rows(y: "np.ndarray", pred: "np.ndarray", beta: float = 2.0) -> "np.ndarray":
    """Per-sample F-beta (an empty row that predicts nothing scores 1), as kernel_src/metrics.py has it."""
    return _fbeta(*_counts(y, pred, 1), beta, 1.0)


def fbeta_score(y: "np.ndarray", pred: "np.ndarray", beta: float = 2.0, average: str = "samples") -> float:
    """The kit's score (kernel_src/metrics.py): per sample, macro (labels no truth or prediction holds left out)
    or micro."""
    if average == "samples":
        return float(f2_rows(y, pred, beta).mean())
    tp, fp, fn = _counts(y, pred, 0)
    if average == "micro":
        return float(_fbeta(tp.sum(), fp.sum(), fn.sum(), beta, 1.0))
    scored = tp + fp + fn > 0
    return float(_fbeta(tp, fp, fn, beta, 0.0)[scored].mean()) if scored.any() else 1.0


def _column_scores(y, pred, beta: float = 2.0) -> tuple:
    """Per label over its column: F-beta, precision, recall."""
    import numpy as np

    tp, fp, fn = _counts(y, pred, 0)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    return _fbeta(tp, fp, fn, beta, 0.0), precision, recall


def oof_scores(folder: Path, beta: float = 2.0, average: str = "samples") -> dict | None:
    """From a train output's oof.npy/oof.csv/classes.json: F-beta against a global threshold, and per class and
    per group F-beta/precision/recall at the best one."""
    import numpy as np

    classes, npy, csv = _json(folder / "classes.json"), folder / "oof.npy", folder / "oof.csv"
    if not (isinstance(classes, dict) and npy.is_file() and csv.is_file()):
        return None
    try:
        probs = np.load(npy)
        ids = [str(i) for i in classes["ids"]]
        column = {label: j for j, label in enumerate(ids)}
        rows = csv.read_text().splitlines()[1:]
        y = np.zeros(probs.shape, dtype=bool)
        for r, line in enumerate(rows[:len(probs)]):
            for label in line.split(",", 1)[1].split():
                if label in column:
                    y[r, column[label]] = True
    except (OSError, ValueError, KeyError, IndexError):
        return None
    grid = np.round(np.arange(0.02, 1.0, 0.02), 4)
    curve = [fbeta_score(y, probs >= t, beta, average) for t in grid]
    best = float(grid[int(np.argmax(curve))])
    f2, precision, recall = _column_scores(y, probs >= best, beta)
    names = classes.get("names") or ids
    groups = {}
    for name, cols in (classes.get("groups") or {}).items():
        groups[name] = {"f2": fbeta_score(y[:, cols], probs[:, cols] >= best, beta, average),
                        "precision": float(precision[cols].mean()), "recall": float(recall[cols].mean())}
    return {"thresholds": grid.tolist(), "f2": curve, "best_threshold": best, "best_f2": max(curve),
            "classes": [str(n) for n in names], "class_f2": f2.tolist(), "class_precision": precision.tolist(),
            "class_recall": recall.tolist(), "support": y.sum(0).tolist(), "groups": groups}


def chain_folders(folder: Path, kernel: str | None = None, version: int | None = None) -> list[tuple[int, Path]]:
    """(session, output folder) of every session of the chain this folder's run belongs to, up to it, from the
    ledger (the rows of one push share kind, base_slug and backend; sessions count up from 1). The run's own
    row is found by its output folder, or by kernel and version (right after its download, before the row
    names the folder)."""
    from packager import ledger

    rows = ledger.read()
    mine = next((r for r in reversed(rows) if (r.get("output") and Path(r["output"]).resolve() == folder.resolve())
                 or (kernel and r.get("kernel") == kernel and r.get("version") == version)), None)
    if mine is None:
        return [(1, folder)]
    mine = {**mine, "output": str(folder)}
    rows = [mine if r.get("kernel") == mine.get("kernel") and r.get("version") == mine.get("version")
            and r.get("backend") == mine.get("backend") else r for r in rows]
    same = [r for r in rows if r.get("kind") == mine.get("kind") and r.get("base_slug") == mine.get("base_slug")
            and r.get("backend") == mine.get("backend")]
    chain, want = [], mine.get("session") or 1
    for r in reversed(same[:same.index(mine) + 1]):  # back from this row: sessions want, want-1, ..., 1
        if (r.get("session") or 1) == want:
            chain.append((want, Path(r["output"]) if r.get("output") else None))
            want -= 1
            if want < 1:
                break
    return [(s, f) for s, f in reversed(chain) if f is not None and f.is_dir()] or [(1, folder)]


def collect(folder: Path, kernel: str | None = None, version: int | None = None) -> dict:
    folder = Path(folder)
    sessions = chain_folders(folder, kernel, version)
    steps, ends, budgets = [], [], []
    for session, f in sessions:
        for s in step_lines(_log_text(f)):
            steps.append({**s, "session": session})
        state = _json(f / "state.json")
        if isinstance(state, dict):
            ends.append((session, state.get("step")))
            if isinstance(state.get("session"), dict):
                budgets.append((session, state["session"]))
    metrics, scores = _json(folder / "metrics.json"), _json(folder / "oof_scores.json")
    submission = folder / "submission.csv"
    # the kit's F-beta, as its outputs say (outputs from before they said it: F2); the keys say f2 whatever it is
    said = [d.get("beta") for d in (metrics, scores) if isinstance(d, dict) and isinstance(d.get("beta"), (int, float))]
    beta = float(said[0]) if said else 2.0
    said = [d.get("average") for d in (metrics, scores) if isinstance(d, dict) and d.get("average") in preflight.AVERAGES]
    average = said[0] if said else "samples"
    return {
        "metric": f"F{beta:g}" if average == "samples" else f"{average} F{beta:g}",
        "folder": folder, "sessions": sessions, "steps": steps, "ends": ends, "budgets": budgets,
        "history": metrics.get("history") if isinstance(metrics, dict) else None,
        "metrics": metrics if isinstance(metrics, dict) else None,
        "state": _json(folder / "state.json"), "oof": oof_scores(folder, beta, average),
        "scores": scores, "decision": _json(folder / "thresholds.json"),
        "submission": submission.read_text().splitlines() if submission.is_file() else None,
    }


# --------------------------------------------------------------------------------------------- plots

def _figure(title: str, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig, ax


def _png(fig) -> bytes:
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _session_lines(ax, data: dict) -> None:
    for session, step in data["ends"][:-1]:
        if isinstance(step, (int, float)):
            ax.axvline(step, color="grey", linestyle="--", linewidth=1)
            ax.text(step, ax.get_ylim()[1], f" end of session {session}", fontsize=7, va="top", color="grey")


def plots(data: dict) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG bytes) of every plot the data allows."""
    from matplotlib.ticker import MaxNLocator

    out, m = [], data["metric"]
    steps, history = data["steps"], data["history"]
    if steps:
        fig, ax = _figure("training loss per step")
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], color="tab:blue", linewidth=1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        _session_lines(ax, data)
        out.append(("train_loss.png", "Training loss (from the log's step lines; dashed: a session's end)", _png(fig)))
        fig, ax = _figure("learning-rate schedule")
        ax.plot([s["step"] for s in steps], [s["lr"] for s in steps], color="tab:orange")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("lr")
        _session_lines(ax, data)
        out.append(("lr.png", "Learning rate per logged step", _png(fig)))
    if history:
        fig, ax = _figure("validation per epoch", 3.8)
        epochs = [h.get("epoch") for h in history]
        for key, color in (("f2", "tab:green"), ("f2@0.5", "tab:olive")):
            if all(isinstance(h.get(key), (int, float)) for h in history):
                ax.plot(epochs, [h[key] for h in history], marker="o", color=color,
                        label=f"{m} ({'searched threshold' if key == 'f2' else 'at 0.5'})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(m)
        if all(isinstance(h.get("loss"), (int, float)) for h in history):
            twin = ax.twinx()
            twin.plot(epochs, [h["loss"] for h in history], marker="s", color="tab:red", label="valid loss")
            if steps:
                by_epoch = {}
                for s in steps:
                    by_epoch.setdefault(s["epoch"], []).append(s["loss"])
                twin.plot(sorted(by_epoch), [sum(v) / len(v) for _, v in sorted(by_epoch.items())], marker="^",
                          color="tab:blue", label="train loss (mean of logged steps)")
            twin.set_ylabel("loss")
            twin.legend(loc="upper left", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)
        ax.legend(loc="upper right", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)
        out.append(("validation.png", "Validation per epoch (metrics.json history)", _png(fig)))
    oof = data["oof"]
    if oof:
        fig, ax = _figure(f"{m} against a global threshold (out of fold)")
        ax.plot(oof["thresholds"], oof["f2"], color="tab:green")
        ax.axvline(oof["best_threshold"], color="grey", linestyle="--")
        ax.set_xlabel("threshold")
        ax.set_ylabel(m)
        out.append(("threshold.png", f"Best global threshold {oof['best_threshold']:.2f}: {m} {oof['best_f2']:.4f}",
                    _png(fig)))
        out.append(_per_class(oof, m))
    scores = data["scores"]
    if isinstance(scores, dict):
        curve = scores.get("curve") or {}
        if curve.get("thresholds") and len(curve.get("f2") or []) == len(curve["thresholds"]):
            fig, ax = _figure(f"{m} of the blend against a global threshold (out of fold)")
            ax.plot(curve["thresholds"], curve["f2"], color="tab:green", label="one global threshold")
            searched = (scores.get("searched") or {}).get("f2")
            if isinstance(searched, (int, float)):
                ax.axhline(searched, color="tab:purple", linestyle="--",
                           label=f"chosen rule {(scores.get('searched') or {}).get('rule')}: {searched:.4f}")
            ax.set_xlabel("threshold")
            ax.set_ylabel(m)
            ax.legend(fontsize=8)
            out.append(("search.png", f"Threshold search: {m} against a global threshold, and the chosen rule",
                        _png(fig)))
        candidates = scores.get("candidates") or {}
        if candidates:
            fig, ax = _figure("each threshold method's result", 0.6 + 0.3 * len(candidates))
            names = sorted(candidates, key=candidates.get)
            ax.barh(names, [candidates[n] for n in names],
                    color=["tab:green" if n == (scores.get("searched") or {}).get("rule") else "tab:grey"
                           for n in names])
            ax.set_xlabel(f"{m} (out of fold)")
            lo = min(candidates.values())
            ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(candidates.values()) + 0.02))
            out.append(("thresholds.png", "Threshold search: every candidate rule (green: chosen)", _png(fig)))
        groups = {k: v for k, v in ((scores.get("searched") or {}).get("groups") or {}).items() if isinstance(v, dict)}
        if groups:
            out.append(_grouped_bars("per group, with the chosen rule", groups, "groups.png", m))
        weights, members = (scores.get("blend") or {}).get("weights"), scores.get("members") or {}
        if members:
            fig, ax = _figure("blend members", 0.8 + 0.35 * len(members))
            names = list(members)
            ax.barh(names, [members[n].get("f2_global", 0) for n in names], color="tab:blue", label=f"{m} (global)")
            if weights:
                for i, w in enumerate(weights[:len(names)]):
                    ax.text(0.01, i, f"weight {w:.3f}", va="center", color="white", fontsize=8)
            ax.set_xlabel(f"{m} alone (best global threshold)")
            out.append(("blend.png", f"Blend: {(scores.get('blend') or {}).get('method')}", _png(fig)))
    budgets = data["budgets"]
    if budgets:
        out.append(_budget(budgets))
    if data["submission"]:
        lines = data["submission"][1:]
        counts = [len(line.split(",", 1)[1].split()) if "," in line else 0 for line in lines]
        fig, ax = _figure("labels per submission row")
        ax.hist(counts, bins=range(0, max(counts + [1]) + 2), color="tab:purple", align="left")
        ax.set_xlabel("labels in a row")
        ax.set_ylabel("rows")
        out.append(("submission.png", f"submission.csv: {len(lines)} rows", _png(fig)))
    return out


def _grouped_bars(title: str, groups: dict, name: str, metric: str) -> tuple[str, str, bytes]:
    import numpy as np

    fig, ax = _figure(title, 0.9 + 0.45 * len(groups))
    labels, y = list(groups), np.arange(len(groups))
    for i, (key, color) in enumerate((("f2", "tab:green"), ("precision", "tab:blue"), ("recall", "tab:orange"))):
        ax.barh(y + (i - 1) * 0.27, [groups[g].get(key, 0) for g in labels], height=0.27, color=color,
                label=metric if key == "f2" else key)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    return name, title[0].upper() + title[1:], _png(fig)


def _per_class(oof: dict, metric: str) -> tuple[str, str, bytes]:
    order = sorted(range(len(oof["classes"])), key=lambda j: oof["class_f2"][j])
    if len(order) > MAX_BARS:  # the weakest and the strongest
        order = order[:MAX_BARS // 2] + order[-MAX_BARS // 2:]
    groups = {f"{oof['classes'][j]} (n={oof['support'][j]})": {"f2": oof["class_f2"][j],
              "precision": oof["class_precision"][j], "recall": oof["class_recall"][j]} for j in order}
    name, _, png = _grouped_bars(f"per class at threshold {oof['best_threshold']:.2f}", groups, "classes.png", metric)
    return name, f"Per class at the best global threshold, weakest first ({len(oof['classes'])} labels)", png


BUDGET_PARTS = (("start-up", "tab:grey"), ("training", "tab:blue"), ("validation", "tab:green"),
                ("checkpoints", "tab:red"), ("final save", "tab:orange"), ("other", "tab:brown"),
                ("unused", "whitesmoke"))


def budget_parts(s: dict) -> dict[str, float]:
    """A session's time (seconds) by what it went to; the parts add up to its limit (or to its run time)."""
    num = lambda key: float(s.get(key) or 0.0)  # noqa: E731
    elapsed, budget = num("elapsed_s"), num("budget_s")
    parts = {"start-up": num("loop_started_s"), "training": num("train_step_s"), "validation": num("validate_s"),
             "checkpoints": num("checkpoint_save_s"), "final save": num("output_save_s")}
    used = elapsed + parts["final save"]
    parts["other"] = max(0.0, elapsed - parts["start-up"] - parts["training"] - parts["validation"]
                         - parts["checkpoints"])
    parts["unused"] = max(0.0, budget - used) if budget else 0.0
    return parts


def _budget(budgets: list[tuple[int, dict]]) -> tuple[str, str, bytes]:
    fig, ax = _figure("time budget per session", 1.6 + 0.5 * len(budgets))
    for row, (session, s) in enumerate(budgets):
        left = 0.0
        for part, color in BUDGET_PARTS:
            width = budget_parts(s)[part] / 60
            ax.barh(row, width, left=left, color=color, edgecolor="black", linewidth=0.3,
                    label=part if row == 0 else None)
            left += width
    ax.set_yticks(range(len(budgets)), [f"session {s}" for s, _ in budgets])
    ax.set_xlabel("minutes")
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.5), frameon=False)
    return "budget.png", "Where each session's time went (state.json)", _png(fig)


# --------------------------------------------------------------------------------------------- html

def _summary(data: dict) -> list[tuple[str, str]]:
    rows, m = [], data["metric"]
    state, metrics, scores = data["state"], data["metrics"], data["scores"]
    if isinstance(state, dict):
        rows.append(("training", f"{'done' if state.get('done') else 'not done'}: step {state.get('step')}/"
                                 f"{state.get('total_steps')}, epoch {state.get('epoch')}/{state.get('epochs')}"))
        # best_metric is half A's F2, which chose the epoch; the recorded CV (metrics.json) is the row below.
        # A state written before the honest CV has no cv_score: its best_metric was the CV.
        if state.get("cv_score") is None and state.get("best_metric") is not None:
            rows.append((f"best {m} (validation fold)", f"{state['best_metric']:.5f} at epoch {state.get('best_epoch')}"))
    if isinstance(metrics, dict) and isinstance(metrics.get("cv_score"), (int, float)):
        rows.append(("CV (train)", f"{metrics['cv_score']:.5f} at epoch {(metrics.get('best') or {}).get('epoch')} "
                                   f"({metrics.get('cv_kind')})"))
    if isinstance(metrics, dict) and isinstance(metrics.get("best"), dict):
        best = metrics["best"]
        rows.append(("best epoch", ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in best.items())))
    if isinstance(scores, dict):
        if isinstance(scores.get("cv_score"), (int, float)):
            rows.append(("CV (blend, chosen rule)", f"{scores['cv_score']:.5f}"
                         + (f" ({scores['cv_kind']})" if scores.get("cv_kind") else "")))
            if isinstance(scores.get("cv_score_in_sample"), (int, float)):
                rows.append(("CV in-sample (optimistic)", f"{scores['cv_score_in_sample']:.5f}"))
            if isinstance(scores.get("holdout_score"), (int, float)):
                rows.append(("the submission, held out", f"{scores['holdout_score']:.5f} on "
                                                         f"{scores.get('holdout_rows')} rows no fold trained on"))
        searched, half = scores.get("searched") or {}, scores.get("at_0.5") or {}
        if searched:
            rows.append(("chosen rule", f"{searched.get('rule')}: {m} {searched.get('f2', 0):.4f}, precision "
                                        f"{searched.get('precision', 0):.4f}, recall {searched.get('recall', 0):.4f}"))
        if half:
            rows.append(("at threshold 0.5", f"{m} {half.get('f2', 0):.4f}"))
        blend = scores.get("blend") or {}
        if blend:
            rows.append(("blend", f"{blend.get('method')}, weights {blend.get('weights')}"))
        for method, tried in (scores.get("blends") or {}).items():  # every blend method validate tried
            if isinstance(tried, dict) and isinstance(tried.get("f2"), (int, float)):
                rows.append((f"blend {method}", f"{m} {tried['f2']:.4f} (global threshold), weights "
                                                f"{tried.get('weights')}"))
        for group, c in (scores.get("constraints") or {}).items():  # each one_of tried with and without
            if isinstance(c, dict):
                rows.append((f"exactly one {group}", f"{m} {c.get('with', 0):.4f} with, {c.get('without', 0):.4f} "
                                                     f"without: {'kept' if c.get('kept') else 'dropped'}"))
        rows.append(("rows scored", f"{scores.get('rows')} of {scores.get('rows_total')}"))
    if len(data["sessions"]) > 1:
        rows.append(("sessions", ", ".join(f"{s}: {f.parent.name}/{f.name}" for s, f in data["sessions"])))
    for session, s in data["budgets"]:
        parts = budget_parts(s)
        rows.append((f"time, session {session}", ", ".join(f"{k} {v / 60:.1f} min" for k, v in parts.items())))
    return rows


def render(data: dict, images: list[tuple[str, str, bytes]], title: str) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in _summary(data))
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for _, caption, png in images)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1600px; }}
h1 {{ font-size: 1.3em; }} table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ text-align: left; padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; font-size: 0.9em; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }} figure {{ margin: 0; }}
img {{ max-width: 750px; border: 1px solid #eee; }} figcaption {{ font-size: 0.8em; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{cells or "<tr><td>no kit output found in this folder</td></tr>"}</table>
<div class="plots">{figures}</div>
</body></html>
"""


def write(folder: Path, title: str | None = None, kernel: str | None = None, version: int | None = None) -> Path:
    """Write the PNGs and report.html into `folder` (the output of `kernel` vN, when given); returns
    report.html's path."""
    from packager.fsutil import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    data = collect(folder, kernel, version)
    images = plots(data)
    for name, _, png in images:
        atomic_write_bytes(folder / name, png)
    path = folder / REPORT
    atomic_write_text(path, render(data, images, title or f"{folder.parent.name} {folder.name}"))
    return path


def write_quietly(folder: Path, title: str | None = None, kernel: str | None = None,
                  version: int | None = None) -> Path | None:
    """write(), but a failure is one warning line (a report never fails a download, a run or a watch)."""
    try:
        return write(folder, title, kernel, version)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: no report for {folder} ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        return None


def report_newest(cfg, kind: str | None = None) -> Path:
    """`kpack report [KIND]`: the report of the ledger's newest run (of KIND) whose output is here."""
    from packager import ledger
    from packager.errors import UserError

    runs = [r for r in ledger.read() if r.get("backend") == cfg.backend and kind in (None, r.get("kind"))]
    rows = [r for r in runs if r.get("output") and Path(r["output"]).is_dir()]
    if not runs:
        raise UserError(f"no {kind + ' ' if kind else ''}run in {ledger.ledger_path()} on the {cfg.backend} backend "
                        f"yet; push one first: kpack push {kind or 'KIND'}")
    if not rows:
        raise UserError(f"no downloaded {kind or 'run'} output in {ledger.ledger_path()} on the {cfg.backend} "
                        f"backend; download one with `kpack output {kind or 'KIND'}`")
    row = rows[-1]
    return write(Path(row["output"]), f"{row['kernel']} v{row['version']} ({row.get('kind')}, session "
                                      f"{row.get('session') or 1}, {row.get('status')})")
