"""Checkpoint files: atomic, checksummed, the previous one kept; damaged ones skipped, foreign ones refused."""
from __future__ import annotations

import os
import pickle
import signal

import pytest
import torch

from kernel_src import atomic, checkpoint


def state(step: int) -> dict:
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(64, 64)}, "position": {"step": step}}


def save(folder, step, training_hash="h1"):
    return checkpoint.save(folder / checkpoint.NAME, state(step), {"step": step, "training_hash": training_hash})


def test_round_trip_and_previous_kept(tmp_path):
    save(tmp_path, 5)
    save(tmp_path, 9)
    meta = checkpoint.read_meta(tmp_path / checkpoint.NAME)
    assert meta["step"] == 9 and meta["size"] > 0 and len(meta["sha256"]) == 64
    assert checkpoint.read_meta(tmp_path / checkpoint.PREVIOUS)["step"] == 5
    found = checkpoint.latest(checkpoint.candidates([tmp_path]), "h1")
    assert found.path == tmp_path / checkpoint.NAME and torch.equal(found.state["model"]["w"], state(9)["model"]["w"])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "trailer"])
def test_damaged_newest_is_skipped_for_the_previous(tmp_path, damage):
    save(tmp_path, 5)
    save(tmp_path, 9)
    newest = tmp_path / checkpoint.NAME
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = data[:-3]
    newest.write_bytes(bytes(data))
    said = []
    found = checkpoint.latest(checkpoint.candidates([tmp_path]), "h1", log=said.append)
    assert found.path == tmp_path / checkpoint.PREVIOUS and found.meta["step"] == 5
    assert len(said) == 1 and str(newest) in said[0] and "\n" not in said[0]


def test_nothing_valid_means_a_fresh_start(tmp_path):
    (tmp_path / checkpoint.NAME).write_bytes(b"not a checkpoint")
    assert checkpoint.latest(checkpoint.candidates([tmp_path]), "h1", log=lambda s: None) is None
    assert checkpoint.latest(checkpoint.candidates([tmp_path / "missing"]), "h1") is None


def test_checkpoint_of_another_config_is_refused_in_one_line(tmp_path):
    save(tmp_path, 3, training_hash="other")
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.latest(checkpoint.candidates([tmp_path]), "h1")
    assert "written by another training config (hash other, this config h1)" in str(err.value)
    assert "\n" not in str(err.value)


def test_another_process_count_is_named_before_the_hash(tmp_path):
    """batch_size: auto resolves by the process count, so a changed count changes the hash as well: the line
    names the count, the cause, rather than a hash the user never set."""
    checkpoint.save(tmp_path / checkpoint.NAME, state(3), {"step": 3, "training_hash": "h-one", "world": 1})
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.latest(checkpoint.candidates([tmp_path]), "h-two", world=2)
    assert "was trained with 1 processes, this run has 2" in str(err.value) and "hash" not in str(err.value)
    with pytest.raises(checkpoint.CheckpointError, match="another training config"):  # same count: the hash
        checkpoint.latest(checkpoint.candidates([tmp_path]), "h-two", world=1)
    assert checkpoint.latest(checkpoint.candidates([tmp_path]), "h-one", world=1).meta["step"] == 3


def test_newest_across_folders_wins_and_temp_files_are_cleaned(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save(tmp_path / "a", 4)
    save(tmp_path / "b", 7)
    stale = tmp_path / "a" / f".{checkpoint.NAME}.x1.tmp"
    stale.write_bytes(b"half a save")
    found = checkpoint.latest(checkpoint.candidates([tmp_path / "a"], [tmp_path / "b" / checkpoint.NAME]), "h1")
    assert found.meta["step"] == 7
    checkpoint.clean_temp(tmp_path / "a")
    assert not stale.exists()


def test_model_files(tmp_path):
    checkpoint.save_model(tmp_path / "best.pt", {"w": torch.ones(2)}, {"labels": {"ids": ["a"]}})
    assert checkpoint.load_model(tmp_path / "best.pt")["labels"] == {"ids": ["a"]}
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "plain.pt")  # a plain torch file loads too
    assert torch.equal(checkpoint.load_model(tmp_path / "plain.pt")["model"]["w"], torch.zeros(1))


# ------------------------------------------------------------------------- temp files never ship

@pytest.fixture
def kaggle_root(tmp_path, monkeypatch):
    """A Kaggle root whose working/ and temp/ share a filesystem (as the local Kaggle's do)."""
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    return root


def killed_while_writing(target) -> None:
    """Fork a child that dies by SIGKILL in the middle of writing `target` (after its first bytes)."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit or the kill
        try:
            def die(self, b):
                os.kill(os.getpid(), signal.SIGKILL)
            checkpoint._Hashing.write = die
            checkpoint.save_model(target, {"w": torch.ones(1000)}, {"epoch": 1})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL


@pytest.mark.parametrize("name", ["best.pt", "model.pt", checkpoint.NAME])
def test_a_write_killed_midway_leaves_no_temp_file_in_working(kaggle_root, name):
    working = kaggle_root / "working"
    killed_while_writing(working / name)
    assert sorted(p.name for p in working.iterdir()) == [], "a temp file here would ship as output"
    left = list((kaggle_root / "temp").rglob("*"))
    assert [p.name for p in left if p.is_file()], "the killed write's temp file is in temp/ (not saved)"
    checkpoint.clean_temp(working)  # the next start removes it there too
    assert not [p for p in (kaggle_root / "temp").rglob("*") if p.is_file()]


def test_without_a_shared_temp_folder_the_temp_file_goes_beside_and_start_up_removes_it(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")  # no temp/ can be made under this root
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "not-a-folder"))
    working = tmp_path / "working"
    working.mkdir()
    checkpoint.save_model(working / "best.pt", {"w": torch.ones(2)}, {"epoch": 1})
    killed_while_writing(working / "model.pt")
    stale = [p.name for p in atomic.temp_files(working)]
    assert len(stale) == 1 and stale[0].startswith(atomic.TEMP_PREFIX + "model.pt.")
    checkpoint.clean_temp(working)
    assert sorted(p.name for p in working.iterdir()) == ["best.pt"]


def test_start_up_removes_the_temp_files_of_every_writer_older_kits_left(kaggle_root):
    """What a kill during a write of best.pt, model.pt, oof.npy or metrics.json left in working/ before."""
    working = kaggle_root / "working"
    stale = [".best.pt.k2j3.tmp", ".model.pt.a8x1.tmp", ".checkpoint.pt.zz.tmp", ".oof.npy.tmp.npy",
             ".metrics.json.tmp", ".best.pt.carry.tmp", atomic.TEMP_PREFIX + "oof.csv.q1"]
    for name in stale:
        (working / name).write_bytes(b"")
    (working / "oof.csv").write_text("id,attribute_ids\n")
    checkpoint.clean_temp(working)
    assert sorted(p.name for p in working.iterdir()) == ["oof.csv"]


def test_a_model_file_has_the_same_bytes_whichever_objects_its_info_came_from(tmp_path):
    """A metric record read back from a checkpoint (its own string objects) gives the bytes a fresh one gives."""
    weights = {"w": torch.arange(6.0)}
    fresh = {"epoch": 3, "step": 9, "metric": {"epoch": 3, "step": 9, "f2": 0.5}}
    read_back = pickle.loads(pickle.dumps(fresh["metric"]))
    checkpoint.save_model(tmp_path / "a.pt", weights, fresh)
    checkpoint.save_model(tmp_path / "b.pt", weights, {**fresh, "metric": read_back})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
