"""The winners' techniques (label smoothing, mixup/cutmix, multi-scale, freezing and discriminative learning
rates, hard-negative mining): each one's mechanics, its wiring into the loop, and exact resume with all of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import checkpoint, clock, engine, freezing, losses, mining, mixing, models, settings


def quiet(_: str) -> None:
    pass


def train(kit: dict, working, steps: int = 10**9) -> dict:
    return engine.run(settings.parse(kit), None, working, clock.FixedSteps(steps), log=quiet)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=64, n_test=8)


# ------------------------------------------------------------------------------------------ settings

@pytest.mark.parametrize("kit,message", [
    ({"stages": [{"label_smoothing": 1.0}]}, "kit.stages[0].label_smoothing: expected a number in [0, 1) (got 1.0)"),
    ({"mix": {"mixup_alpha": -1}}, "kit.mix.mixup_alpha: expected 0 (off) or more (got -1.0)"),
    ({"mix": {"prob": 2}}, "kit.mix.prob: expected a number in [0, 1] (got 2.0)"),
    ({"data": {"train_sizes": [32, 4]}}, "kit.data.train_sizes: expected sizes of at least 8 (got [32, 4])"),
    ({"data": {"train_sizes_per": "step"}}, "kit.data.train_sizes_per: expected one of 'batch', 'epoch'"),
    ({"freeze": {"unfreeze_every": 2}}, "kit.freeze.unfreeze_every: expected 0 unless train_stages is set"),
    ({"freeze": {"lr_decay": 0}}, "kit.freeze.lr_decay: expected a number in (0, 1] (got 0.0)"),
    ({"mining": {"share": 1}}, "kit.mining.share: expected a number in [0, 1) (got 1.0)"),
])
def test_technique_settings_errors_are_one_line(kit, message):
    with pytest.raises(settings.SettingsError) as err:
        settings.parse(kit)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_techniques_are_off_by_default_and_in_the_hash_only_when_set():
    kit = settings.parse({})
    assert not mixing.enabled(kit.mix) and not freezing.active(kit.freeze) and kit.mining.share == 0
    assert kit.data.train_sizes == [] and kit.stages[0].label_smoothing == 0
    plain = settings.training_hash(kit)
    # the hash of a run without them is what it was before they existed (checkpoints stay resumable)
    assert "mix" not in settings._hashed(kit) and "train_sizes" not in settings._hashed(kit)["data"]
    for changed in ({"mix": {"cutmix_alpha": 1.0}}, {"freeze": {"lr_decay": 0.5}}, {"mining": {"share": 0.1}},
                    {"data": {"train_sizes": [32]}}, {"stages": [{"epochs": 5, "label_smoothing": 0.1}]}):
        assert settings.training_hash(settings.parse(changed)) != plain, changed
    assert settings.training_hash(settings.parse({"mix": {"mixup_alpha": 0.0}})) == plain


# ------------------------------------------------------------------------------------------ mechanics

def test_label_smoothing_keeps_targets_in_the_band():
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    s = losses.smooth(y, 0.2)
    assert torch.allclose(s, torch.tensor([[0.1, 0.9, 0.9, 0.1]]))
    assert losses.smooth(y, 0.0) is y


def batch(n=6, k=5, size=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    targets = (torch.rand(n, k, generator=g) > 0.5).float()
    return images, targets


def test_mixup_mixes_images_and_targets_by_the_same_lambda():
    images, targets = batch()
    m = mixing.draw(settings.MixSettings(mixup_alpha=0.4), 6, 16, 16, seed=1, epoch=2, batch=3)
    assert m.kind == "mixup" and 0 < m.lam < 1 and sorted(m.perm) == list(range(6))
    x, y = mixing.mix_batch(images, targets, m)
    p = torch.as_tensor(m.perm)
    assert torch.allclose(x, images.float() * m.lam + images.float()[p] * (1 - m.lam))
    assert torch.allclose(y, targets * m.lam + targets[p] * (1 - m.lam))
    again = mixing.draw(settings.MixSettings(mixup_alpha=0.4), 6, 16, 16, seed=1, epoch=2, batch=3)
    other = mixing.draw(settings.MixSettings(mixup_alpha=0.4), 6, 16, 16, seed=1, epoch=2, batch=4)
    assert (again.lam, list(again.perm)) == (m.lam, list(m.perm)) and other.lam != m.lam


def test_cutmix_target_weight_is_the_pasted_area():
    images, targets = batch()
    for b in range(20):
        m = mixing.draw(settings.MixSettings(cutmix_alpha=1.0), 6, 16, 16, seed=1, epoch=0, batch=b)
        assert m.kind == "cutmix"
        x, y = mixing.mix_batch(images, targets, m)
        p = torch.as_tensor(m.perm)
        pasted = (x != images).any(1)  # pixels that came from the partner (where the two differ)
        from_partner = torch.zeros(16, 16, dtype=torch.bool)
        y0, y1, x0, x1 = m.box
        from_partner[y0:y1, x0:x1] = True
        assert (pasted <= from_partner).all()
        assert abs((1 - m.lam) - from_partner.float().mean().item()) < 1e-9
        assert torch.allclose(y, targets * m.lam + targets[p] * (1 - m.lam))
        assert torch.equal(x[:, :, from_partner], images[p][:, :, from_partner])


def test_mix_prob_and_switch():
    kinds = [mixing.draw(settings.MixSettings(mixup_alpha=1, cutmix_alpha=1, prob=0.5), 8, 8, 8, 0, 0, b).kind
             for b in range(400)]
    assert 150 < kinds.count("none") < 250 and kinds.count("mixup") > 50 and kinds.count("cutmix") > 50


def test_multi_scale_sizes_per_batch_and_per_epoch():
    per_batch = settings.parse({"data": {"train_sizes": [16, 24, 32]}}).data
    sizes = [mixing.train_size(per_batch, 3, 0, b) for b in range(60)]
    assert set(sizes) == {16, 24, 32} and sizes == [mixing.train_size(per_batch, 3, 0, b) for b in range(60)]
    per_epoch = settings.parse({"data": {"train_sizes": [16, 24, 32], "train_sizes_per": "epoch"}}).data
    assert len({mixing.train_size(per_epoch, 3, 5, b) for b in range(20)}) == 1
    assert len({mixing.train_size(per_epoch, 3, e, 0) for e in range(20)}) > 1
    assert mixing.train_size(settings.parse({}).data, 3, 0, 0) is None
    assert mixing.resize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 24).shape == (2, 3, 24, 24)


def tiny_model():
    return models.build_model(settings.ModelSettings(name="test_resnet"), 5, 3)


def test_gradual_unfreezing_sets_requires_grad_per_stage_per_epoch():
    model = tiny_model()
    per_stage = freezing.stages(model)
    assert len(per_stage) == 6  # stem, layer1..4, head
    assert per_stage[-1][0] is model.backbone.fc.weight and per_stage[0][0] is model.backbone.conv1[0].weight
    freeze = settings.FreezeSettings(train_stages=1, unfreeze_every=2)
    seen = []
    for epoch in range(10):
        freezing.set_trainable(freeze, model, epoch)
        seen.append([all(p.requires_grad for p in ps) or (any(p.requires_grad for p in ps) and None)
                     for ps in per_stage])
    # head + layer4 at first; one stage more every 2 epochs; the stem from epoch 8
    assert seen[0] == seen[1] == [False, False, False, False, True, True]
    assert seen[2] == [False, False, False, True, True, True]
    assert seen[7] == [False, True, True, True, True, True]
    assert seen[8] == seen[9] == [True] * 6
    freezing.set_trainable(settings.FreezeSettings(train_stages=2), model, 99)  # no unfreezing: stays
    assert [all(p.requires_grad for p in ps) for ps in per_stage] == [False, False, False, True, True, True]


def test_discriminative_learning_rates_per_stage():
    kit = settings.parse({"freeze": {"lr_decay": 0.5}, "optim": {"lr": 1e-2}})
    model = tiny_model()
    optimizer = engine.build_optimizer(kit, model, torch.device("cpu"))
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert len(scale_of) == len(list(model.parameters()))  # every parameter, once
    per_stage = freezing.stages(model)
    assert [scale_of[id(ps[0])] for ps in per_stage] == [0.5 ** 5, 0.5 ** 4, 0.5 ** 3, 0.25, 0.5, 1.0]
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, kit.optim.weight_decay}


def test_mining_draws_the_hardest_share_more_often_next_epoch():
    miner = mining.Miner(100, 0.2, seed=7)
    miner.begin(0)
    assert sorted(miner.order(0)) == list(range(100))  # nothing recorded yet: a plain permutation
    miner.record(np.arange(100), np.arange(100, dtype=np.float32))  # sample i's loss is i: 80..99 hardest
    miner.begin(0)  # resuming inside the epoch keeps the record
    miner.begin(1)
    assert sorted(miner.hardest()) == list(range(80, 100))
    order = miner.order(1)
    assert len(order) == 100 and np.array_equal(order, miner.order(1))  # same length, a function of the state
    hard = np.isin(order, np.arange(80, 100)).sum()
    assert hard >= 30  # 20 of 100 before; about 33 expected (40 of a 120 pool, 100 drawn)
    assert np.bincount(order, minlength=100)[80:].max() == 2 and np.bincount(order, minlength=100)[:80].max() == 1
    state = miner.state()
    resumed = mining.Miner(100, 0.2, seed=7)
    resumed.load(state)
    assert np.array_equal(resumed.order(1), order)
    miner.begin(2)  # epoch 1 recorded nothing: no sample is known to be hard
    assert sorted(miner.order(2)) == list(range(100))


# ------------------------------------------------------------------------------------------ in the loop

ALL = {"mix": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, "data.train_sizes": [24, 32], "freeze": {"train_stages": 2, "unfreeze_every": 1, "lr_decay": 0.5},
       "mining": {"share": 0.25}}


def all_techniques(demo) -> dict:
    kit = kit_support.tiny_kit(demo, **ALL)
    kit["stages"][0]["label_smoothing"] = 0.1
    return kit


def stem_untouched(kit: dict, working) -> bool:
    """The stem (frozen through all 3 epochs of all_techniques: 5 stages from the head) is at its init."""
    trained = kit_support.final_weights(working)
    torch.manual_seed(kit["seed"])  # the engine's initial weights
    fresh = models.build_model(settings.parse(kit).model, trained["fc.weight"].shape[0], 3).backbone.state_dict()
    stem = [k for k in trained if k.startswith("conv1.") and "running" not in k and "num_batches" not in k]
    return bool(stem) and all(torch.equal(trained[k], fresh[k]) for k in stem)


def test_all_techniques_stopped_and_resumed_equal_straight(demo, tmp_path):
    kit = all_techniques(demo)
    assert train(kit, tmp_path / "straight")["done"]
    for steps in (1, 3):  # inside epoch 0, then inside epoch 1 (3 steps an epoch): across a mining roll-over
        assert not train(kit, tmp_path / "w", steps)["done"]
    assert train(kit, tmp_path / "w")["done"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"),
                                    kit_support.final_weights(tmp_path / "straight"))
    state = checkpoint.load(tmp_path / "straight" / checkpoint.NAME)
    groups = state["optimizer"]["param_groups"]
    head = max(g["lr"] for g in groups)
    assert head > 0  # lr * lr_decay**d for the stage d stages from the head
    assert sorted({round(g["lr"] / head, 6) for g in groups}) == [0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]
    assert stem_untouched(kit, tmp_path / "straight")
    mined = state["mining"][0]
    assert mined["epoch"] == 2 and np.isfinite(mined["previous"]).sum() > 0
    plain = kit_support.tiny_kit(demo)
    assert train(plain, tmp_path / "plain")["done"]
    assert not kit_support.same_weights(kit_support.final_weights(tmp_path / "plain"),
                                        kit_support.final_weights(tmp_path / "straight"))


def test_training_only_the_last_stages_leaves_the_rest_at_their_init(demo, tmp_path):
    kit = kit_support.tiny_kit(demo, **{"freeze": {"train_stages": 1}, "ema": {"enabled": False},
                                        "model.drop_rate": 0.0})
    assert train(kit, tmp_path / "w")["done"]
    trained = kit_support.final_weights(tmp_path / "w")
    torch.manual_seed(kit["seed"])  # the engine's initial weights
    classes = trained["fc.weight"].shape[0]
    fresh = models.build_model(settings.parse(kit).model, classes, 3).backbone.state_dict()
    assert set(trained) == set(fresh)
    for name in trained:
        if not name.startswith(("layer4.", "fc.")) and "running" not in name and "num_batches" not in name:
            assert torch.equal(trained[name], fresh[name]), name  # frozen: stem and layer1..3
    assert not torch.equal(trained["fc.weight"], fresh["fc.weight"])
    assert not torch.equal(trained["layer4.0.conv1.weight"], fresh["layer4.0.conv1.weight"])


def test_all_techniques_with_two_processes_resume_exactly(demo, tmp_path, monkeypatch):
    """Two gloo processes (KPACK_PROCESSES=2, as on a T4 x2): mining merges both ranks' records, frozen stages
    get no gradient under DDP, and a stop after one step resumes to the straight two-process run's weights."""
    from kernel_src import train as entry

    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    monkeypatch.setenv("KPACK_PROCESSES", "2")
    kit = all_techniques(demo)
    config = {"competition": "demo", "kaggle_user": "kpack", "kernels": {}}
    straight = entry.main({**config, "kit": kit}, working=tmp_path / "straight")
    assert straight["done"] and straight["world"] == 2
    stopped = entry.main({**config, "kit": {**kit, "session": {**kit["session"], "max_steps": 2}}},
                         working=tmp_path / "w")
    assert not stopped["done"] and stopped["step"] == 2
    assert entry.main({**config, "kit": kit}, working=tmp_path / "w")["done"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"),
                                    kit_support.final_weights(tmp_path / "straight"))
    assert stem_untouched(kit, tmp_path / "straight")  # DDP hands frozen stages no update either
    mined = checkpoint.load(tmp_path / "straight" / checkpoint.NAME)["mining"]
    assert len(mined) == 2 and np.array_equal(mined[0]["previous"], mined[1]["previous"], equal_nan=True)
    seen = [np.isfinite(m["current"]) for m in mined]  # each rank recorded its own shard
    assert seen[0].any() and seen[1].any() and not (seen[0] & seen[1]).all()
