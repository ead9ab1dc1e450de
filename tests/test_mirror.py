"""`kpack local competition mirror` (packager/localkaggle/mirror.py): a local copy of a real competition from
its downloaded files, its hidden test set drawn from train.csv, on two shapes of download: iMet-like
(multi-label `id,attribute_ids`, `train/<id>.png`) and Cassava-like (single label `image_id,label` whose ids
carry `.jpg`, `train_images/`)."""
from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import USER
from test_localkaggle_cli import ROOT, make_kernel, ok, uniq

KPACK = str(Path(sys.executable).parent / "kpack")


def make_imet(folder: Path, n: int = 120) -> Path:
    """An iMet-2019-like download: 12 labels of very different frequency, 1-3 per image."""
    rng = random.Random(1)
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    rows = []
    for i in range(n):
        labels = {str(rng.choices(range(12), weights=[40, 30, 20, 12, 8, 6, 5, 4, 3, 3, 2, 2])[0])
                  for _ in range(rng.randint(1, 3))}
        image_id = f"{i * 7919 % 100000:05x}"
        rows.append(f"{image_id},{' '.join(sorted(labels, key=int))}")
        (folder / "train" / f"{image_id}.png").write_bytes(b"\x89PNG train " + image_id.encode())
    (folder / "test" / "secret.png").write_bytes(b"\x89PNG real test")  # the real test images are not taken
    (folder / "train.csv").write_text("id,attribute_ids\n" + "\n".join(rows) + "\n")
    (folder / "labels.csv").write_text("attribute_id,attribute_name\n" + "".join(f"{k},tag::{k}\n" for k in range(12)))
    (folder / "sample_submission.csv").write_text("id,attribute_ids\nabc123,0 1 2\n")
    return folder


def make_cassava(folder: Path, n: int = 100) -> Path:
    """A Cassava-like download: 5 classes, image ids that carry their extension, a tfrecords folder."""
    rng = random.Random(2)
    (folder / "train_images").mkdir(parents=True)
    (folder / "test_images").mkdir()
    (folder / "train_tfrecords").mkdir()
    (folder / "train_tfrecords" / "ld_train00.tfrec").write_bytes(b"tfrecord")
    rows = []
    for i in range(n):
        image_id = f"{1000000 + i * 37}.jpg"
        rows.append(f"{image_id},{rng.choices(range(5), weights=[5, 10, 11, 60, 14])[0]}")
        (folder / "train_images" / image_id).write_bytes(b"\xff\xd8 " + image_id.encode())
    (folder / "test_images" / "2216849948.jpg").write_bytes(b"\xff\xd8 real test")
    (folder / "train.csv").write_text("image_id,label\n" + "\n".join(rows) + "\n")
    (folder / "sample_submission.csv").write_text("image_id,label\n2216849948.jpg,4\n")
    (folder / "label_num_to_disease_map.json").write_text(json.dumps({str(k): f"d{k}" for k in range(5)}))
    return folder


def mirror(root: Path, slug: str, data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KPACK, "local", "competition", "mirror", slug, "--data", str(data), "--root", str(root),
                           *args], capture_output=True, text=True, cwd=data.parent, timeout=120)


def table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mirror_of_a_multilabel_download(tmp_path):
    data = make_imet(tmp_path / "imet")
    done = mirror(tmp_path / "r", "imet-mirror", data, "--sample", "100")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"competition imet-mirror ready in {tmp_path / 'r'}: mirror of {data} (id id, label attribute_ids: "
        "multi-label, scored by f2-samples); train 80 rows, test 20 (10 public, 10 private), 100 files from train/"]
    comp = tmp_path / "r" / "competitions" / "imet-mirror"
    files = sorted(str(p.relative_to(comp / "data")) for p in (comp / "data").rglob("*") if p.is_file())
    solution, train = table(comp / "solution.csv"), table(comp / "data" / "train.csv")
    test_ids, train_ids = [r["id"] for r in solution], [r["id"] for r in train]
    assert files == sorted(["train.csv", "sample_submission.csv", "labels.csv",
                            *(f"train/{i}.png" for i in train_ids), *(f"test/{i}.png" for i in test_ids)])
    assert not set(test_ids) & set(train_ids)
    first = f"{test_ids[0]}.png"
    assert (comp / "data" / "test" / first).read_bytes() == (data / "train" / first).read_bytes()
    assert Counter(r["Usage"] for r in solution) == {"Public": 10, "Private": 10}
    real = {r["id"]: r["attribute_ids"] for r in table(data / "train.csv")}
    assert all(real[r["id"]] == r["attribute_ids"] for r in solution)  # the hidden labels are train's own
    sample = table(comp / "data" / "sample_submission.csv")
    assert [r["id"] for r in sample] == test_ids and {r["attribute_ids"] for r in sample} == {"0 1 2"}
    # stratified on each row's rarest label: every label with 5+ rows in the sample is in the test set
    counts = Counter(lab for i in [*train_ids, *test_ids] for lab in real[i].split())
    in_test = {lab for r in solution for lab in r["attribute_ids"].split()}
    assert {lab for lab, n in counts.items() if n >= 5} <= in_test
    assert "solution" not in " ".join(files)


def test_mirror_of_a_single_label_download(tmp_path):
    data = make_cassava(tmp_path / "cassava")
    done = mirror(tmp_path / "r", "cassava-mirror", data, "--sample", "0", "--test-fraction", "0.3", "--code")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"code competition cassava-mirror ready in {tmp_path / 'r'}: mirror of {data} (id image_id, label label: "
        "single-label, scored by accuracy); train 70 rows, test 30 (15 public, 15 private), 100 files from "
        "train_images/",
        "note: left out of the mirror: train_tfrecords/ (not named by train.csv's ids)"]
    comp = tmp_path / "r" / "competitions" / "cassava-mirror"
    solution = table(comp / "solution.csv")
    assert sorted(p.name for p in (comp / "data" / "test_images").iterdir()) == sorted(r["image_id"] for r in solution)
    assert (comp / "data" / "label_num_to_disease_map.json").is_file()
    assert [r["label"] for r in table(comp / "data" / "sample_submission.csv")] == ["4"] * 30
    # each class's share of the test set is its share of train.csv, to within one row
    every = Counter(r["label"] for r in table(data / "train.csv"))
    test = Counter(r["label"] for r in solution)
    assert all(abs(test[k] - n * 30 / 100) <= 1 for k, n in every.items()), (test, every)
    again = mirror(tmp_path / "r2", "cassava-mirror", data, "--sample", "0", "--test-fraction", "0.3")
    assert table(tmp_path / "r2" / "competitions" / "cassava-mirror" / "solution.csv") == solution  # seeded


def test_mirror_keeps_a_real_test_csvs_columns(tmp_path):
    data = tmp_path / "tab"
    data.mkdir()
    rng = random.Random(3)
    rows = [f"{i},{rng.random():.4f},{rng.randint(0, 9)},{rng.random() * 100:.3f}" for i in range(60)]
    (data / "train.csv").write_text("id,f1,f2,target\n" + "\n".join(rows) + "\n")
    (data / "test.csv").write_text("id,f1,f2\n1000,0.5,3\n")
    (data / "sample_submission.csv").write_text("id,target\n1000,0.0\n")
    done = mirror(tmp_path / "r", "tab-mirror", data, "--sample", "50")
    assert done.returncode == 0, done.stderr
    assert "(id id, label target: regression, scored by rmse); train 40 rows, test 10 (5 public, 5 private), no " \
           "image folder" in done.stdout
    comp = tmp_path / "r" / "competitions" / "tab-mirror" / "data"
    test = table(comp / "test.csv")
    assert list(test[0]) == ["id", "f1", "f2"] and len(test) == 10
    assert [r["target"] for r in table(comp / "sample_submission.csv")] == ["0.0"] * 10
    # a metric the target cannot be scored by is refused in one line, and nothing is made
    refused = mirror(tmp_path / "r", "tab-auc", data, "--sample", "50", "--metric", "auc")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: --metric auc: the label column target (regression) cannot be scored so: line 2: target '"), \
        refused.stderr
    assert "a binary target must be 0 or 1" in refused.stderr
    assert not (tmp_path / "r" / "competitions" / "tab-auc").exists()


def test_mirror_with_named_columns_and_a_missing_image(tmp_path):
    data = make_cassava(tmp_path / "cassava", n=40)
    (data / "sample_submission.csv").unlink()  # columns then come from the flags
    text = (data / "train.csv").read_text().replace("image_id,label", "image_id,source,label")
    (data / "train.csv").write_text("\n".join(_add_source(line, i) for i, line in enumerate(text.splitlines())) + "\n")
    gone = sorted((data / "train_images").iterdir())[0]
    gone.unlink()
    done = mirror(tmp_path / "r", "named-mirror", data, "--sample", "0", "--label-column", "label")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith(
        "(id image_id, label label: single-label, scored by accuracy); train 32 rows, test 8 (4 public, 4 private), "
        "39 files from train_images/")
    assert done.stdout.splitlines()[1] == ("note: 1 files of the sampled rows are not in train_images/; their "
                                           "kernels' inputs lack them too")
    comp = tmp_path / "r" / "competitions" / "named-mirror"
    assert list(table(comp / "data" / "sample_submission.csv")[0]) == ["image_id", "label"]
    assert list(table(comp / "data" / "train.csv")[0]) == ["image_id", "source", "label"]
    missing = mirror(tmp_path / "r", "named-mirror-2", data)
    assert missing.stderr.splitlines() == [
        f"error: {data}: cannot tell the label column (train.csv has columns image_id,source,label); pass "
        "--label-column NAME (one column; the local scorer takes one label column)"]


def make_hpa(folder: Path, n: int = 40) -> Path:
    """A Human-Protein-Atlas-like download: `Id,Target`, four grey PNGs per image (`<Id>_red.png` ...)."""
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    rows = []
    for i in range(n):
        image_id = f"{i:04d}-ab{i % 7}"
        rows.append(f"{image_id},{i % 5}{' 7' if i % 3 == 0 else ''}")
        for channel in ("red", "green", "blue", "yellow"):
            (folder / "train" / f"{image_id}_{channel}.png").write_bytes(f"\x89PNG {image_id} {channel}".encode())
    (folder / "train" / "notes.txt").write_text("a stray file")
    (folder / "test" / "9999-zz_red.png").write_bytes(b"\x89PNG real test")
    (folder / "train.csv").write_text("Id,Target\n" + "\n".join(rows) + "\n")
    (folder / "sample_submission.csv").write_text("Id,Predicted\n9999-zz,0\n")
    return folder


def test_mirror_of_one_file_per_channel_takes_every_channel(tmp_path):
    data = make_hpa(tmp_path / "hpa")
    (data / "train" / "0003-ab3_yellow.png").unlink()
    done = mirror(tmp_path / "r", "hpa-mirror", data, "--sample", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith("test 8 (4 public, 4 private), 159 files from train/")
    assert done.stdout.splitlines()[1].startswith("note: 1 files of the sampled rows are not in train/")
    assert done.stdout.splitlines()[2] == (  # what kit.data needs: a config a user copies (HPA 2018's own)
        "kit: to read this layout, set in kpack.yaml's kit.data: {id_column: Id, labels_column: Target, labels_csv: "
        "null, channel_files: [blue, green, red, yellow], channels: 4}")
    import yaml

    from kernel_src import data as kit_data, settings
    kit = settings.parse({"data": yaml.safe_load(done.stdout.splitlines()[2].split("kit.data: ", 1)[1])}).data
    comp_data = tmp_path / "r" / "competitions" / "hpa-mirror" / "data"
    train = kit_data.read_train(kit, comp_data)
    assert len(train.ids) == 32 and train.labels.ids == [str(k) for k in (0, 1, 2, 3, 4, 7)]
    assert len(kit_data.read_test(kit, comp_data, train.labels).ids) == 8
    comp = tmp_path / "r" / "competitions" / "hpa-mirror" / "data"
    test_ids = [r["Id"] for r in table(comp.parent / "solution.csv")]
    assert sorted(p.name for p in (comp / "test").iterdir()) == sorted(
        f"{i}_{c}.png" for i in test_ids for c in ("red", "green", "blue", "yellow") if f"{i}_{c}" != "0003-ab3_yellow")
    assert [r["Id"] for r in table(comp / "sample_submission.csv")] == test_ids
    # train.csv says Target, a submission Predicted: the solution takes the submission's name, and scores one
    from packager.localkaggle.scoring import score_submission
    assert list(table(comp.parent / "solution.csv")[0]) == ["Id", "Predicted", "Usage"]
    assert "(id Id, label Target: multi-label" in done.stdout
    truth = {r["Id"]: r["Predicted"] for r in table(comp.parent / "solution.csv")}
    perfect = "Id,Predicted\n" + "".join(f"{i},{truth[i]}\n" for i in test_ids)
    assert score_submission(perfect.encode(), comp.parent / "solution.csv", "f1-macro").public == 1.0


def _add_source(line: str, i: int) -> str:
    if i == 0:
        return line
    image_id, label = line.split(",")
    return f"{image_id},field{i % 3},{label}"


@pytest.mark.parametrize("case, args, line", [
    ("no-train", [], "error: {data}: no train.csv; point --data at the unpacked download of `kaggle competitions "
                     "download -c SLUG`"),
    ("two-targets", [], "error: {data}: cannot tell the label column (sample_submission.csv has columns "
                        "id,a,b); pass --label-column NAME (one column; the local scorer takes one label column)"),
    ("two-targets", ["--label-column", "c"], "error: {data}/train.csv: no column 'c' (it has id,a,b); pass "
                                             "--label-column with one of those"),
    ("imet.zip", [], "error: {data}: not a folder; unpack the download first (`unzip {data} -d imet`) and pass "
                     "--data imet"),
    ("tiny", ["--sample", "3"], "error: --sample 3: too few rows for a train set and a test set of at least 2 "
                                "(public and private); train.csv has 4"),
])
def test_mirror_refuses_bad_input_in_one_line(tmp_path, case, args, line):
    data = tmp_path / case
    if case.endswith(".zip"):  # what `kaggle competitions download` writes
        data.write_bytes(b"PK\x05\x06" + bytes(18))
    else:
        data.mkdir()
    if case == "two-targets":
        (data / "train.csv").write_text("id,a,b\n1,x,y\n2,x,y\n")
        (data / "sample_submission.csv").write_text("id,a,b\n9,x,y\n")
    elif case == "tiny":
        (data / "train.csv").write_text("id,label\n1,a\n2,b\n3,a\n4,b\n")
    done = mirror(tmp_path / "r", "bad-mirror", data, *args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [line.format(data=data)]
    assert not (tmp_path / "r" / "competitions").exists()
    assert not [p for p in (tmp_path / "r").glob(".mirror-*")]  # nothing half-written left behind


@pytest.mark.slow
@pytest.mark.parametrize("shape, folder, suffix, guess", [(make_imet, "test", ".png", "0 1"),
                                                          (make_cassava, "test_images", "", "3")])
def test_a_kernel_reads_the_mirror_and_its_submission_is_scored(run_kaggle, local_kaggle, tmp_path, shape, folder,
                                                                suffix, guess):
    from packager.localkaggle.scoring import fbeta

    data = shape(tmp_path / "download")
    comp, slug = uniq("mirror"), uniq("mirror-infer")
    done = mirror(local_kaggle.root, comp, data, "--sample", "60", "--code")
    assert done.returncode == 0, done.stderr
    # the real pipeline's inference: every test image that sample_submission.csv names is there; one guess each
    code = ROOT + ('import csv\n'
                   f'base = root / "input" / "competitions" / "{comp}"\n'
                   'header, *rows = list(csv.reader(open(base / "sample_submission.csv")))\n'
                   f'assert all((base / "{folder}" / (r[0] + "{suffix}")).is_file() for r in rows), "no image"\n'
                   'assert not list(root.joinpath("input").rglob("solution*")), "the answers are mounted"\n'
                   f'lines = [",".join(header)] + [r[0] + ",{guess}" for r in rows]\n'
                   '(root / "working" / "submission.csv").write_text("\\n".join(lines) + "\\n")\n')
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "k", slug, code, competition_sources=[comp]))))
    assert local_kaggle.wait_kernel(USER, slug, 1)["status"] == "COMPLETE"
    ok(run_kaggle("competitions", "submit", comp, "-k", f"{USER}/{slug}", "-v", "1", "-f", "submission.csv",
                  "-m", "one guess"))
    deadline = time.monotonic() + 30
    while "SubmissionStatus.PENDING" in (listing := ok(run_kaggle("competitions", "submissions", comp))):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    solution = list(csv.reader(open(local_kaggle.root / "competitions" / comp / "solution.csv")))[1:]
    def scored(truth: str) -> float:  # a multi-label mirror is scored by F2, a single-label one by accuracy
        return fbeta(set(truth.split()), set(guess.split())) if shape is make_imet else float(truth == guess)

    expected = [sum(scored(r[1]) for r in solution if r[2] == u) / 6 for u in ("Public", "Private")]
    line = next(x for x in listing.splitlines() if "one guess" in x)
    assert "SubmissionStatus.COMPLETE" in line
    assert f"{expected[0]:.5f}" in line and f"{expected[1]:.5f}" in line
