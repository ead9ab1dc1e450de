"""Checkpoint files: atomic, checksummed, the previous one kept; damaged ones skipped, foreign ones refused."""
from __future__ import annotations

import pytest
import torch

from kernel_src import checkpoint


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
