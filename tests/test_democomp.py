"""The demo competition: deterministic bytes, labels that say what is drawn, files the scorer accepts."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager import democomp
from packager.errors import UserError
from packager.fsutil import tree_hash
from packager.localkaggle.scoring import load_solution, score_submission

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_train=24, n_test=10, image_size=32)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    return load_digits()


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return democomp.generate(tmp_path_factory.mktemp("demo"), seed=3, **TINY)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = democomp.generate(tmp_path / "a", seed=7, **TINY)
    b = democomp.generate(tmp_path / "b", seed=7, **TINY)
    c = democomp.generate(tmp_path / "c", seed=8, **TINY)
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    assert tree_hash(tmp_path / "a") != tree_hash(tmp_path / "c")
    assert a.solution_csv.read_bytes() == b.solution_csv.read_bytes() != c.solution_csv.read_bytes()


def test_layout_and_hidden_solution(comp):
    data = comp.data_dir
    assert {p.name for p in data.iterdir()} == {"train.csv", "labels.csv", "sample_submission.csv", "train", "test"}
    assert comp.solution_csv.is_file() and data not in comp.solution_csv.parents
    train, test = _rows(data / "train.csv"), _rows(data / "sample_submission.csv")
    assert len(train) == TINY["n_train"] and len(test) == TINY["n_test"]
    assert sorted(p.stem for p in (data / "train").iterdir()) == sorted(r["id"] for r in train)
    assert sorted(p.stem for p in (data / "test").iterdir()) == sorted(r["id"] for r in test)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    image = Image.open(data / "train" / f"{train[0]['id']}.png")
    assert image.size == (32, 32) and image.mode == "L"
    labels = _rows(data / "labels.csv")
    assert [r["attribute_name"] for r in labels] == democomp.label_names(4)
    assert [int(r["attribute_id"]) for r in labels] == list(range(14))


def test_rgb_and_size(tmp_path):
    comp = democomp.generate(tmp_path, seed=1, n_train=3, n_test=2, image_size=48, mode="RGB")
    image = Image.open(next((comp.data_dir / "test").iterdir()))
    assert image.size == (48, 48) and image.mode == "RGB"


def test_count_group_matches_digit_group(comp):
    names = democomp.label_names(4)
    rows = _rows(comp.data_dir / "train.csv") + _rows(comp.solution_csv)
    for row in rows:
        labels = [names[int(i)] for i in row["attribute_ids"].split()]
        digit = [n for n in labels if n.startswith("digit::")]
        count = [n for n in labels if n.startswith("count::")]
        assert len(count) == 1 and count[0] == f"count::{len(digit)}"
        assert 1 <= len(digit) <= 4 and len(set(digit)) == len(digit)
        assert row["attribute_ids"].split() == sorted(row["attribute_ids"].split(), key=int)


def test_labels_are_the_digits_drawn_and_test_samples_are_unseen(tmp_path, monkeypatch, digits):
    by_bytes = {}
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        by_bytes.setdefault(image.tobytes(), set()).add((index, int(target)))
    drawn: list[list[set]] = []
    render = democomp._render

    def recording(samples, *args, **kwargs):
        drawn.append([by_bytes[s.tobytes()] for s in samples])
        return render(samples, *args, **kwargs)

    monkeypatch.setattr(democomp, "_render", recording)
    comp = democomp.generate(tmp_path, seed=5, **TINY)
    rows = _rows(comp.data_dir / "train.csv") + [
        {"attribute_ids": r["attribute_ids"]} for r in _rows(comp.solution_csv)]
    assert len(drawn) == len(rows)
    for row, samples in zip(rows, drawn):
        digit_ids = {int(i) for i in row["attribute_ids"].split() if int(i) < 10}
        assert all(any(t in digit_ids for _, t in s) for s in samples)
        assert len(samples) == len(digit_ids)
    train_samples = {i for s in drawn[:TINY["n_train"]] for hits in s for i, _ in hits}
    test_samples = {i for s in drawn[TINY["n_train"]:] for hits in s for i, _ in hits}
    assert train_samples and test_samples and not train_samples & test_samples


def _ink_signature(pixels: np.ndarray) -> np.ndarray:
    """The ink's tight box, stretched to 12x12: the same for a digit at any position and scale."""
    ys, xs = np.nonzero(pixels > 0.25 * pixels.max())
    crop = Image.fromarray(pixels[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8))
    return np.asarray(crop.resize((12, 12), Image.BILINEAR), dtype=np.float32).ravel() / 255


def test_single_digit_images_look_like_their_label(tmp_path, digits):
    """Render-level check: each image's ink is nearest to reference samples of its label."""
    comp = democomp.generate(tmp_path, seed=2, n_train=40, n_test=1, image_size=64, max_digits=1, noise=0.0)
    refs = np.stack([_ink_signature(np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize(
        (32, 32), Image.BICUBIC), dtype=np.float32)) for im in digits.images])
    rows = _rows(comp.data_dir / "train.csv")
    hits = 0
    for row in rows:
        pixels = np.asarray(Image.open(comp.data_dir / "train" / f"{row['id']}.png"), dtype=np.float32)
        nearest = np.argsort(((refs - _ink_signature(pixels)) ** 2).sum(axis=1))[:5]
        hits += np.bincount(digits.target[nearest], minlength=10).argmax() == int(row["attribute_ids"].split()[0])
    assert hits >= 0.9 * len(rows)


def test_scorer_accepts_the_files(comp):
    solution = load_solution(comp.solution_csv)
    assert (solution.id_column, solution.columns) == ("id", ["attribute_ids"])
    usages = {usage for _, usage in solution.rows.values()}
    assert usages == {"Public", "Private"}
    sample = (comp.data_dir / "sample_submission.csv").read_bytes()
    assert 0 <= score_submission(sample, comp.solution_csv).public <= 1
    perfect = "id,attribute_ids\n" + "".join(f"{r['id']},{r['attribute_ids']}\n" for r in _rows(comp.solution_csv))
    score = score_submission(perfect.encode(), comp.solution_csv)
    assert score.public == score.private == 1.0 and score.rows == TINY["n_test"]
    sample_ids = [r["id"] for r in _rows(comp.data_dir / "sample_submission.csv")]
    assert sample_ids == [r["id"] for r in _rows(comp.solution_csv)]


def test_kit_reads_the_competition(comp):
    from kernel_src import data, settings

    kit = settings.parse({"data": {"root": str(comp.data_dir)}})
    table = data.read_train(kit.data, comp.data_dir)
    assert table.targets.shape == (TINY["n_train"], 14) and all(p.is_file() for p in table.paths)
    assert set(table.labels.groups) == {"digit", "count"}
    assert (table.targets[:, table.labels.groups["count"]].sum(axis=1) == 1).all()
    test = data.read_test(kit.data, comp.data_dir, table.labels)
    assert len(test.ids) == TINY["n_test"] and all(p.is_file() for p in test.paths)


def test_bad_arguments_are_refused_before_writing(tmp_path):
    for kwargs, field in [({"mode": "CMYK"}, "mode"), ({"image_size": 8}, "image_size"),
                          ({"max_digits": 5}, "max_digits"), ({"n_test": 0}, "n_test")]:
        with pytest.raises(UserError, match=field):
            democomp.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_regenerating_replaces_the_whole_folder(tmp_path):
    democomp.generate(tmp_path / "c", seed=1, n_train=6, n_test=3, image_size=16)
    comp = democomp.generate(tmp_path / "c", seed=2, n_train=4, n_test=2, image_size=16)
    assert len(list((comp.data_dir / "train").iterdir())) == 4 and len(list((comp.data_dir / "test").iterdir())) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp or old folder left behind
    fresh = democomp.generate(tmp_path / "d", seed=2, n_train=4, n_test=2, image_size=16)
    assert tree_hash(tmp_path / "c") == tree_hash(tmp_path / "d")
    assert fresh.data_dir.parent.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="other files"):
        democomp.generate(tmp_path / "mine", n_train=2, n_test=1, image_size=16)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "packager.democomp", str(tmp_path / "ok"), "--n-train", "3",
                          "--n-test", "2", "--image-size", "16"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and (tmp_path / "ok" / "solution.csv").is_file()
    bad = subprocess.run([sys.executable, "-m", "packager.democomp", str(tmp_path / "bad"), "--image-size", "8"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "image_size" in bad.stderr
    assert not (tmp_path / "bad").exists()
