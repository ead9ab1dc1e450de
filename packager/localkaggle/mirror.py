"""`kpack local competition mirror`: a local copy of a real competition, made from its downloaded files.

The real test labels are secret, so the mirror's hidden test set comes from the training rows: a stratified
sample of train.csv is split into the mirror's train.csv and its test set, whose labels become the solution
(kept out of the data folder) with a Usage column splitting it into public and private halves. Only the files
the sampled rows name are taken (images named by id under the real train folder go to the mirror's train and
test folders), sample_submission.csv is written with the real one's columns and value format, and a real
test.csv (features without labels) gets the test rows under its own columns.

Stratification: a single label on the label itself; a number with many distinct values on its quantile bins;
space-separated labels (multi-label) on each row's rarest label, so rare labels reach both sides.
"""
from __future__ import annotations

import csv
import io
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from packager.errors import UserError

TRAIN_CSV, TEST_CSV, SAMPLE_CSV = "train.csv", "test.csv", "sample_submission.csv"
REGRESSION_MIN_DISTINCT = 20  # a numeric label with at least this many distinct values is binned, not a class
BINS = 10


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> int:
        return self.header.index(name)


@dataclass
class Mirrored:
    id_column: str
    label_column: str
    label_kind: str  # multi-label | single-label | regression
    train_rows: int
    public_rows: int
    private_rows: int
    files: int  # data files of the sampled rows (images)
    missing: int  # files of the sampled rows that are not there
    folder: str | None  # the real train folder they came from
    skipped: list[str]  # top-level folders of the download left out
    kit_data: dict  # the kit.data settings, unlike the kit's defaults, that read this layout ({}: none)


def read_table(path: Path) -> Table:
    try:
        text = path.read_bytes().decode("utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text)) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
    if not rows:
        raise UserError(f"{path}: empty; expected a header line and rows")
    return Table([h.strip() for h in rows[0]], rows[1:])


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------- columns

def pick_columns(train: Table, sample: Table | None, id_column: str | None, label_column: str | None,
                 where: Path) -> tuple[str, str, str]:
    """The id and label columns, and the label's name in a submission: as given, else the sample submission's
    (id first, one target), else train's only pair of columns. A submission may name the label otherwise than
    train.csv (HPA 2018: `Target` in train, `Predicted` in the submission): then train's one other column is the
    label and the solution takes the submission's name."""
    wanted = sample.header if sample is not None else train.header
    id_column = id_column or (wanted[0] if wanted else None)
    answers = [h for h in wanted if h != id_column]
    answer = answers[0] if sample is not None and len(answers) == 1 and answers[0] not in train.header else None
    if label_column is None:
        rest = [h for h in train.header if h != id_column]
        label_column = answers[0] if len(answers) == 1 else None
        if answer is not None and len(rest) == 1:
            label_column = rest[0]
        if label_column is None:
            what = f"{SAMPLE_CSV} has columns {','.join(wanted)}" if sample is not None else \
                f"{TRAIN_CSV} has columns {','.join(train.header)}"
            raise UserError(f"{where}: cannot tell the label column ({what}); pass --label-column NAME "
                            "(one column; the local scorer takes one label column)")
    for flag, name in (("--id-column", id_column), ("--label-column", label_column)):
        if name not in train.header:
            raise UserError(f"{where / TRAIN_CSV}: no column {name!r} (it has {','.join(train.header)}); pass "
                            f"{flag} with one of those")
    if id_column == label_column:
        raise UserError(f"{where}: the id and label columns are both {id_column!r}; pass --id-column and "
                        "--label-column")
    return id_column, label_column, answer or label_column


def label_kind(values: list[str]) -> str:
    if any(len(v.split()) > 1 for v in values):
        return "multi-label"
    try:
        numbers = {float(v) for v in values}
    except ValueError:
        return "single-label"
    integral = all(n.is_integer() for n in numbers)
    return "regression" if len(numbers) >= REGRESSION_MIN_DISTINCT and not (integral and len(numbers) < 100) \
        else "single-label"


def strata(values: list[str], kind: str) -> list[str]:
    """One stratum key per row."""
    if kind == "regression":
        numbers = [float(v) for v in values]
        edges = sorted(numbers)
        cuts = [edges[len(edges) * k // BINS] for k in range(1, BINS)]
        return [str(sum(n > c for c in cuts)) for n in numbers]
    if kind == "multi-label":
        counts = Counter(label for v in values for label in set(v.split()))
        # a row's rarest label (ties: the smaller name), '' for a row without labels
        return [min(set(v.split()), key=lambda lab: (counts[lab], lab)) if v.split() else "" for v in values]
    return [v.strip() for v in values]


def allocate(sizes: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """`total` shared among groups in proportion to their sizes (largest remainder, ties at random)."""
    whole = sum(sizes.values())
    quota = {k: total * n / whole for k, n in sizes.items()}
    given = {k: int(q) for k, q in quota.items()}
    rest = sorted(sizes, key=lambda k: (given[k] - quota[k], rng.random()))
    for k in rest[:total - sum(given.values())]:
        given[k] += 1
    return given


def stratified_split(keys: list[str], rows: list[int], count: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(`count` of `rows` drawn stratum by stratum, the rest), each stratum's share kept to within one row."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in rows:
        groups[keys[i]].append(i)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    take = allocate({k: len(v) for k, v in groups.items()}, count, rng)
    chosen = [i for k in sorted(groups) for i in groups[k][:take[k]]]
    left = [i for k in sorted(groups) for i in groups[k][take[k]:]]
    return chosen, left


# --------------------------------------------------------------------------------------------- files

def find_image_folder(data: Path, ids: list[str]) -> tuple[Path | None, list[str]]:
    """The folder under `data` whose files are named by the ids and the suffixes that make an id a file name:
    [''] when ids carry their extension, ['.png'] for `<id>.png`, or one per channel for one file per channel
    (`<id>_red.png`, `<id>_green.png`, ... as the Human Protein Atlas): the folder holding most ids, if at
    least half."""
    wanted, best = set(ids), (0, None, [""])
    for folder, _, names in os.walk(data):
        if Path(folder) == data:
            continue
        by_name, by_stem, by_channel = 0, Counter(), Counter()
        for name in names:
            if name in wanted:
                by_name += 1
            stem, dot, ext = name.rpartition(".")
            if dot and stem in wanted:
                by_stem["." + ext] += 1
            base, underscore, channel = stem.rpartition("_")
            if dot and underscore and base in wanted:
                by_channel[f"_{channel}.{ext}"] += 1
        suffix, hits = by_stem.most_common(1)[0] if by_stem else ("", 0)
        channels = by_channel.most_common(1)[0][1] if by_channel else 0
        if channels > max(by_name, hits):  # every channel most ids have; a stray suffix is left out
            score, choice = channels, sorted(s for s, n in by_channel.items() if n * 2 >= channels)
        else:
            score, choice = (by_name, [""]) if by_name >= hits else (hits, [suffix])
        if score > best[0]:
            best = (score, Path(folder), choice)
    return (best[1], best[2]) if best[0] * 2 >= len(wanted) else (None, [""])


def test_folder_of(train_folder: str) -> str:
    """Where the mirror's test images go: the real download's name for it (train_images -> test_images, train ->
    test), or the train folder itself when its name says nothing of train (one folder for all images)."""
    for old, new in (("train", "test"), ("Train", "Test"), ("TRAIN", "TEST")):
        if old in train_folder:
            return train_folder.replace(old, new)
    return train_folder


def place(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (no bytes copied), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------- the mirror

def build(data: Path, out: Path, sample: int, seed: int, test_fraction: float, id_column: str | None,
          label_column: str | None) -> Mirrored:
    """Write the mirror's data folder (out/data) and solution (out/solution.csv)."""
    if not (data / TRAIN_CSV).is_file():
        raise UserError(f"{data}: no {TRAIN_CSV}; point --data at the unpacked download of "
                        "`kaggle competitions download -c SLUG`")
    train = read_table(data / TRAIN_CSV)
    sample_table = read_table(data / SAMPLE_CSV) if (data / SAMPLE_CSV).is_file() else None
    id_column, label_column, answer_column = pick_columns(train, sample_table, id_column, label_column, data)
    at_id, at_label = train.column(id_column), train.column(label_column)
    rows = [r for r in train.rows if len(r) == len(train.header)]
    if len(rows) != len(train.rows):
        bad = next(i for i, r in enumerate(train.rows, start=2) if len(r) != len(train.header))
        raise UserError(f"{data / TRAIN_CSV}: line {bad}: expected {len(train.header)} values")
    ids = [r[at_id].strip() for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise UserError(f"{data / TRAIN_CSV}: id {dup!r} appears more than once in {id_column!r}; pass "
                        "--id-column with a column of unique ids")
    count = len(rows) if sample <= 0 else min(sample, len(rows))
    n_test = round(count * test_fraction)
    if n_test < 2 or count - n_test < 1:
        raise UserError(f"--sample {sample}: too few rows for a train set and a test set of at least 2 (public and "
                        f"private); {TRAIN_CSV} has {len(rows)}")

    kind = label_kind([r[at_label] for r in rows])
    rng = random.Random(seed)
    keys = strata([r[at_label] for r in rows], kind)
    chosen, _ = stratified_split(keys, list(range(len(rows))), count, rng)
    test_at, kept_at = stratified_split(keys, chosen, n_test, rng)
    # public and private alternate through the strata, so each half is stratified too
    test_at.sort(key=lambda i: keys[i])
    test, kept = [rows[i] for i in test_at], [rows[i] for i in sorted(kept_at)]
    usage = ["Public" if j % 2 == 0 else "Private" for j in range(len(test))]

    out_data = out / "data"
    out_data.mkdir(parents=True)
    write_table(out_data / TRAIN_CSV, train.header, kept)
    write_table(out / "solution.csv", [id_column, answer_column, "Usage"],
                [[r[at_id].strip(), r[at_label].strip(), u] for r, u in zip(test, usage)])
    test_ids = [r[at_id].strip() for r in test]
    if sample_table is not None:
        example = sample_table.rows[0] if sample_table.rows else []
        filler = [example[i] if i < len(example) else "0" for i in range(len(sample_table.header))]
        at = sample_table.header.index(id_column) if id_column in sample_table.header else 0
        write_table(out_data / SAMPLE_CSV, sample_table.header,
                    [[test_id if i == at else value for i, value in enumerate(filler)] for test_id in test_ids])
    else:
        write_table(out_data / SAMPLE_CSV, [id_column, label_column],
                    [[test_id, "0"] for test_id in test_ids])
    if (data / TEST_CSV).is_file():
        real = read_table(data / TEST_CSV)
        absent = [h for h in real.header if h not in train.header]
        if absent:
            raise UserError(f"{data / TEST_CSV}: columns {','.join(absent)} are not in {TRAIN_CSV}; the mirror "
                            "makes its test.csv from training rows")
        write_table(out_data / TEST_CSV, real.header, [[r[train.column(h)] for h in real.header] for r in test])

    folder, suffixes = find_image_folder(data, ids)
    files, missing, skipped = 0, 0, []
    image_parts: set[Path] = set()
    rel = test_rel = None  # the train and test image folders, relative to the data folder
    if folder is not None:
        rel = folder.relative_to(data)
        test_rel = rel.parent / test_folder_of(rel.name)
        image_parts = {data / rel.parts[0], data / test_rel.parts[0]}
        for target, chunk in ((rel, kept), (test_rel, test)):
            for row in chunk:
                for name in (row[at_id].strip() + suffix for suffix in suffixes):
                    if (folder / name).is_file():
                        place(folder / name, out_data / target / name)
                        files += 1
                    else:
                        missing += 1
    for entry in sorted(data.iterdir()):
        if entry.name in (TRAIN_CSV, TEST_CSV, SAMPLE_CSV) or entry in image_parts:
            continue
        if entry.is_file():
            place(entry, out_data / entry.name)  # labels.csv and the like: the competition's own metadata
        else:
            skipped.append(entry.name + "/")
    return Mirrored(id_column, label_column, kind, len(kept), usage.count("Public"), usage.count("Private"), files,
                    missing, None if rel is None else str(rel), skipped,
                    kit_data(kind, id_column, label_column, (data / "labels.csv").is_file(), rel, test_rel, suffixes))


def kit_data(kind: str, id_column: str, label_column: str, has_labels_csv: bool, folder: Path | None,
             test_folder: Path | None, suffixes: list[str]) -> dict:
    """What kit.data (kernel_src/settings.py) needs set to read this layout: the fields whose defaults (iMet's
    `id,attribute_ids`, labels.csv, train/<id>.png) it does not match. The kit is multi-label: {} otherwise."""
    if kind != "multi-label":
        return {}
    need: dict = {}
    if id_column != "id":
        need["id_column"] = id_column
    if label_column != "attribute_ids":
        need["labels_column"] = label_column
    if not has_labels_csv:
        need["labels_csv"] = None  # the label ids are the tokens train.csv holds
    if folder is not None:
        if str(folder) != "train":
            need["train_images"], need["test_images"] = str(folder), str(test_folder)
        if len(suffixes) > 1:  # <id>_<channel>.<ext>
            need["channel_files"] = [suffix[1:].rsplit(".", 1)[0] for suffix in suffixes]
            need["channels"] = len(suffixes)
        ext = "." + suffixes[0].rsplit(".", 1)[1] if "." in suffixes[0] else ""
        if ext and ext != ".png":
            need["image_ext"] = ext
    return need


# The metric a mirror is scored by when none is named: the likeliest for its label column's kind.
KIND_METRIC = {"multi-label": "f2-samples", "single-label": "accuracy", "regression": "rmse"}


def mirror(store, slug: str, data: Path, sample: int, seed: int, test_fraction: float, id_column: str | None,
           label_column: str | None, code: bool, title: str | None, replace: bool,
           metric: str | None = None) -> tuple[Mirrored, dict]:
    """Build the mirror in a temporary folder beside the store and create the competition from it."""
    from packager.localkaggle.scoring import load_solution

    data = Path(data)
    store.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".mirror-{slug}-", dir=store.root))
    try:
        made = build(data, work, sample, seed, test_fraction, id_column, label_column)
        metric = metric or KIND_METRIC[made.label_kind]
        try:
            load_solution(work / "solution.csv", metric)
        except ValueError as exc:
            raise UserError(f"--metric {metric}: the label column {made.label_column} ({made.label_kind}) cannot be "
                            f"scored so: {exc}") from None
        info = store.create_competition(slug, work / "data", work / "solution.csv", code=code,
                                        title=title or f"{slug.replace('-', ' ').title()} (local mirror)",
                                        replace=replace, metric=metric)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return made, info
