"""The kit's config schema: defaults, one-line errors naming the field, and the training hash."""
from __future__ import annotations

import pytest

from kernel_src import settings


def test_empty_kit_is_valid_with_defaults():
    kit = settings.parse({})
    assert kit.epochs == 5 and kit.optim.name == "adamw"
    assert [(t.name, t.gamma, t.alpha, t.weight) for t in kit.stages[0].loss] == [("focal", 2.0, -1.0, 1.0)]
    assert settings.parse(None) == kit
    # a stage that names no loss gets the default; one that names bce keeps it
    staged = settings.parse({"stages": [{"epochs": 2}, {"epochs": 1, "loss": "bce"}]}).stages
    assert [[t.name for t in s.loss] for s in staged] == [["focal"], ["bce"]]


@pytest.mark.parametrize("kit,message", [
    ({"optim": {"lr": "fast"}}, "kit.optim.lr: expected a number (got 'fast')"),
    ({"optim": {"lr": -1}}, "kit.optim.lr: expected a positive learning rate (got -1.0)"),
    ({"data": {"fold": 5}}, "kit.data.fold: expected -1 (no validation) or 0..4 (got 5)"),
    ({"model": {"nam": "resnet18"}}, "kit.model.nam: unknown field; remove it or check its spelling"),
    ({"amp": "bf16"}, "kit.amp: expected one of 'auto', 'fp16', 'off' (got 'bf16')"),
    ({"stages": [{"loss": {"bce": "x"}}]}, "kit.stages[0].loss.bce: expected a weight or a mapping (got 'x')"),
    ({"stages": [{"epochs": 1}, {"loss": "mse"}]}, "kit.stages[1].loss[0].name: expected one of"),
    ({"augment": {"tta": "hflip"}}, "kit.augment.tta: expected a list (got 'hflip')"),
    ({"data": {"num_workers": True}}, "kit.data.num_workers: expected an integer (got True)"),
    ({"stages": []}, "kit.stages: expected at least one stage"),
    ({"optim": {"batch_size": "big"}}, "kit.optim.batch_size: expected 'auto' or an integer (got 'big')"),
    ({"optim": {"batch_size": 0}}, "kit.optim.batch_size: expected auto or 1 or more (got 0)"),
    ([1], "kit: expected a mapping of settings"),
])
def test_errors_are_one_line_naming_the_field(kit, message):
    with pytest.raises(settings.SettingsError) as err:
        settings.parse(kit)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_loss_shorthands():
    kit = settings.parse({"stages": [
        {"epochs": 2, "loss": "focal"},
        {"loss": {"bce": 1, "forgiving": {"weight": 0.5, "w": 2}}},
        {"loss": [{"name": "soft_fbeta", "beta": 1.0}]},
    ]})
    assert [t.name for t in kit.stages[0].loss] == ["focal"]
    assert [(t.name, t.weight) for t in kit.stages[1].loss] == [("bce", 1.0), ("forgiving", 0.5)]
    assert kit.stages[1].loss[1].w == 2.0 and kit.stages[2].loss[0].beta == 1.0
    assert kit.epochs == 4
    assert [kit.stage_at(e)[0] for e in range(4)] == [0, 0, 1, 2]


def test_training_hash_ignores_runtime_fields_only():
    base = settings.training_hash(settings.parse({}))
    runtime = {"data": {"num_workers": 7, "cache": True, "root": "/elsewhere"},
               "session": {"margin_seconds": 5, "checkpoint_every_steps": 3}, "log_every_steps": 1}
    assert settings.training_hash(settings.parse(runtime)) == base
    for changed in ({"seed": 1}, {"optim": {"lr": 0.01}}, {"data": {"image_size": 96}}, {"stages": [{"epochs": 6}]}):
        assert settings.training_hash(settings.parse(changed)) != base, changed


def test_to_dict_round_trips():
    kit = settings.parse({"stages": [{"epochs": 2, "loss": {"bce": 1.0}}], "ema": {"enabled": True}})
    assert settings.parse(settings.to_dict(kit)) == kit


def test_from_config_leaves_the_evaluation_sections_to_their_entries():
    config = {"kit": {"optim": {"lr": 0.01}, "thresholds": {"method": "global"}, "infer": {"batch_size": 8}}}
    kit = settings.from_config(config)
    assert kit.optim.lr == 0.01
    assert settings.training_hash(kit) == settings.training_hash(settings.parse({"optim": {"lr": 0.01}}))
    with pytest.raises(settings.SettingsError, match="kit.thresholds: unknown field"):
        settings.parse(config["kit"])


def test_loss_mapping_order_does_not_change_the_training_hash():
    """The packed kernel's config is JSON with sorted keys: a mapping written in another order in kpack.yaml
    must give the same terms, or the kernel would refuse checkpoints made from the same config."""
    one = settings.parse({"stages": [{"loss": {"soft_fbeta": 1.0, "bce": 0.5}}]})
    other = settings.parse({"stages": [{"loss": {"bce": 0.5, "soft_fbeta": 1.0}}]})
    assert [t.name for t in one.stages[0].loss] == ["bce", "soft_fbeta"]
    assert settings.training_hash(one) == settings.training_hash(other)


def test_session_budget_is_whole_seconds_like_the_pushed_limit(monkeypatch):
    from kernel_src import clock

    monkeypatch.delenv(clock.ENV_SECONDS, raising=False)
    assert clock.session_seconds({"kernels": {"train": {"session_hours": 0.012}}}) == 43.0  # push sends int(43.2)
    assert clock.session_seconds({"kernels": {"train": {}}}) == 12 * 3600


def test_settings_load_on_the_host_with_the_standard_library_only(tmp_path):
    """kpack's pre-flight check loads kernel_src/settings.py by path on the user's machine (packager/preflight.py):
    it must need nothing but the standard library, not even the kernel_src package."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(settings.__file__)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('s', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m; spec.loader.exec_module(m)\n"
            "try:\n    m.from_config({'kit': {'optim': {'lr': 'fast'}, 'thresholds': {'fixed': 0.4}}})\n"
            "except m.SettingsError as e:\n    print(e)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('kernel_src', 'numpy', 'torch')))\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["kit.optim.lr: expected a number (got 'fast')", "[]"]


def test_batch_size_auto_takes_the_largest_batch_that_gives_the_run_its_steps():
    from kernel_src import engine
    said = []
    auto = settings.parse({"stages": [{"epochs": 12}]})
    assert auto.optim.batch_size == "auto" and settings.parse({"optim": {"batch_size": 16}}).optim.batch_size == 16
    # a few hundred rows: 32 would give 108 steps, 16 216, 8 444 (< 1000: the smallest)
    assert engine.resolve_batch_size(auto, 300, 1, said.append).optim.batch_size == 8
    assert said == ["[kpack] optim.batch_size auto: 8 per process (444 optimizer steps over 12 epochs of 300 rows; "
                    "32 would give 108)"]
    assert engine.resolve_batch_size(auto, 1400, 1, said.append).optim.batch_size == 16   # 16: 1044 steps
    big = engine.resolve_batch_size(auto, 90_000, 1, said.append)                     # iMet-sized: unchanged
    assert big.optim.batch_size == 32
    # the steps are counted per process and per optimizer step: two processes or accumulation halve them
    assert engine.resolve_batch_size(auto, 2800, 2, said.append).optim.batch_size == 16
    assert engine.resolve_batch_size(auto, 2800, 1, said.append).optim.batch_size == 32
    accum = settings.parse({"stages": [{"epochs": 12}], "optim": {"accum_steps": 2}})
    assert engine.resolve_batch_size(accum, 2800, 1, said.append).optim.batch_size == 16
    # a resolved 32 hashes as an explicit 32 (the old default), so runs begun before keep resuming
    assert settings.training_hash(big) == settings.training_hash(
        settings.parse({"stages": [{"epochs": 12}], "optim": {"batch_size": 32}}))
    fixed = settings.parse({"optim": {"batch_size": 64}})
    assert engine.resolve_batch_size(fixed, 300, 1, said.append) is fixed and len(said) == 6
