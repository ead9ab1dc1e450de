"""The project config: valid files load with their defaults; bad ones are refused with one line naming the field."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from packager.config import load_config, parse_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"competition": "digits-multilabel", "kaggle_user": "alice",
           "kernels": {"train": {"entry": "kernel_src/train.py"}}}


def test_repo_config_loads():
    cfg = load_config(REPO / "kpack.yaml")
    assert cfg.backend == "local"
    assert set(cfg.kernels) == {"train", "validate", "infer"}


def test_defaults_are_kaggle_safe():
    cfg = parse_config(copy.deepcopy(MINIMAL))
    train = cfg.kernels["train"]
    assert (train.accelerator, train.internet, train.private, train.session_hours) == ("NvidiaTeslaT4", False, True, 12)
    assert train.slug == "digits-multilabel-train" and train.title == train.slug
    assert cfg.backend == "local" and cfg.local.port == 8599


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["kernels"]["train"].update(accelerator=4), "kernels.train.accelerator: expected a valid string (got 4)"),
    (lambda d: d.update(backend="colab"), "backend: expected 'local' or 'kaggle' (got 'colab')"),
    (lambda d: d.update(compettition="x"), "compettition: unknown field"),
    (lambda d: d["kernels"]["train"].pop("entry"), "kernels.train.entry: required field is missing"),
    (lambda d: d["kernels"]["train"].update(session_hours=13),
     "kernels.train.session_hours: 13 h is over the 12 h session limit of NvidiaTeslaT4 (GPU) sessions; use 12 or less"),
    (lambda d: d["kernels"]["train"].update(accelerator="TpuV5E8", session_hours=10),
     "kernels.train.session_hours: 10 h is over the 9 h session limit of TpuV5E8 (TPU) sessions; use 9 or less"),
    (lambda d: d["kernels"]["train"].update(session_hours="9"), "kernels.train.session_hours: expected a valid number"),
    (lambda d: d["kernels"]["train"].update(private="yes"),
     "kernels.train.private: expected true or false, unquoted (got 'yes')"),
    (lambda d: d.update(datasets={"weights": {"slug": "my-weights", "encrypt": "no"}}),
     "datasets.weights.encrypt: expected true or false, unquoted (got 'no')"),
    (lambda d: d.update(local={"port": "8599"}), "local.port: expected a valid integer (got '8599')"),
    (lambda d: d["kernels"].update(infer={"entry": "kernel_src/infer.py", "session_hours": 12}) or
     d.update(competition_limits={"runtime_hours": 9}),
     "kernels.infer.session_hours: 12 h is over the competition's 9 h run-time limit "
     "(competition_limits.runtime_hours); use 9 or less"),
    (lambda d: d["kernels"]["train"].update(sources={"datasets": ["no-owner"]}), "kernels.train.sources.datasets: 'owner/slug'"),
    (lambda d: d.update(competition="Digits!"), "competition: a slug of 3-50 lowercase letters"),
    (lambda d: d["kernels"].update(predict={"entry": "x.py"}), "kernels.predict: expected 'train', 'validate' or 'infer'"),
])
def test_bad_config_is_refused_with_one_line(mutate, expected):
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    with pytest.raises(UserError) as err:
        parse_config(data, "kpack.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kpack.yaml: " + expected), message


def test_cli_refuses_bad_config_with_one_line_and_nonzero_exit(tmp_path):
    bad = copy.deepcopy(MINIMAL)
    bad["kernels"]["train"]["internet"] = "sometimes"
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kpack.yaml: line 6: kernels.train.internet: expected true or false, unquoted (got 'sometimes')"]
    assert not (tmp_path / "build").exists()


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "kpack.yaml"
    path.write_text("competition: x\nkernels: [unclosed\n")
    with pytest.raises(UserError, match=r"kpack.yaml: line \d+ is not valid YAML"):
        load_config(path)


def test_missing_config_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KPACK_CONFIG", raising=False)
    with pytest.raises(UserError, match="no project config here"):
        load_config()


@pytest.mark.parametrize("name, value, expected", [
    ("KPACK_RETRY_ATTEMPTS", "many", "expected a whole number of at least 1"),
    ("KPACK_POLL_MAX_S", "-5", "expected a number of at least 0"),
])
def test_bad_environment_setting_is_one_line_naming_it(tmp_path, name, value, expected):
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(MINIMAL))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "status", "train"], cwd=tmp_path,
                            capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), name: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {name}={value!r}: {expected}; fix or unset it"]


def test_max_sessions_from_the_environment(monkeypatch):
    from packager import chain

    cfg = parse_config(MINIMAL)
    monkeypatch.setenv("KPACK_MAX_SESSIONS", "3")
    assert chain.max_sessions(cfg, "train") == 3
    monkeypatch.setenv("KPACK_MAX_SESSIONS", "0")
    with pytest.raises(UserError, match=r"^KPACK_MAX_SESSIONS='0': expected a whole number of at least 1"):
        chain.max_sessions(cfg, "train")


def test_an_error_line_never_shows_a_secret_value(tmp_path):
    bad = copy.deepcopy(MINIMAL)
    bad["kernels"]["train"]["internet"] = "hunter2-is-my-api-token"  # pasted into the wrong field
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                                 "MY_API_TOKEN": "hunter2-is-my-api-token"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kpack.yaml: line 6: kernels.train.internet: expected true or false, unquoted (got '[redacted]')"]



# ------------------------------------------------------------------ machine shapes and session limits


@pytest.mark.parametrize("shape, hours", [
    ("None", 12), ("NvidiaTeslaT4", 12), ("NvidiaTeslaT4Highmem", 12), ("NvidiaL4", 12), ("NvidiaL4X1", 12),
    ("NvidiaTeslaA100", 12), ("NvidiaH100", 12), ("NvidiaRtxPro6000", 12), ("NvidiaTeslaP100", 12),
    ("TpuV38", 9), ("Tpu1VmV38", 9), ("TpuV5E8", 9), ("TpuV6E8", 9)])
def test_every_kaggle_shape_is_accepted_and_session_hours_default_to_its_limit(shape, hours):
    data = copy.deepcopy(MINIMAL)
    data["kernels"]["train"]["accelerator"] = shape
    train = parse_config(data).kernels["train"]
    assert (train.accelerator, train.session_hours) == (shape, hours)
    data["kernels"]["train"]["session_hours"] = hours  # the limit itself is allowed
    assert parse_config(data).kernels["train"].session_hours == hours


def test_an_unknown_shape_is_accepted_as_given():
    data = copy.deepcopy(MINIMAL)
    data["kernels"]["train"]["accelerator"] = "NvidiaB200"  # new hardware kpack does not know yet
    assert parse_config(data).kernels["train"].accelerator == "NvidiaB200"  # build warns (test_shapes.py)


def test_competition_limit_bounds_the_submitted_notebook_only():
    data = copy.deepcopy(MINIMAL)
    data["kernels"]["infer"] = {"entry": "kernel_src/infer.py"}
    data["competition_limits"] = {"runtime_hours": 9}
    cfg = parse_config(data)
    assert cfg.kernels["infer"].session_hours == 9  # the default follows the competition's limit
    assert cfg.kernels["train"].session_hours == 12  # training notebooks are not rerun by the competition


# ------------------------------------------------------------------ the file itself


def _write(tmp_path, text: bytes | str) -> Path:
    path = tmp_path / "kpack.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


VALID = ("competition: digits-multilabel\nkaggle_user: alice\nkernels:\n  train:\n"
         "    entry: kernel_src/train.py\n")


def test_a_duplicate_key_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path, VALID + "    private: false\n    internet: false\n    private: true\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: line 8: duplicate key 'private' (first on line 6); keep one: YAML would "
                              "silently use the last")


def test_a_duplicate_top_level_section_is_refused(tmp_path):
    path = _write(tmp_path, VALID + "kernels: {}\n")
    with pytest.raises(UserError, match=r"line 6: duplicate key 'kernels' \(first on line 3\)"):
        load_config(path)


def test_a_string_for_a_boolean_names_its_line(tmp_path):
    path = _write(tmp_path, VALID + "    private: 'yes'\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: line 6: kernels.train.private: expected true or false, unquoted (got 'yes')"


def test_a_missing_field_names_its_section_line(tmp_path):
    path = _write(tmp_path, VALID.replace("    entry: kernel_src/train.py\n", "    slug: my-train\n"))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: line 4: kernels.train.entry: required field is missing"


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = _write(tmp_path, VALID.replace("kernels:\n  train:\n    entry: kernel_src/train.py\n",
                                          "kernels:\n  train: &t {entry: kernel_src/train.py, private: true}\n"
                                          "  validate:\n    <<: *t\n    private: false\n"))
    cfg = load_config(path)
    assert cfg.kernels["validate"].private is False and cfg.kernels["validate"].entry == "kernel_src/train.py"


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = _write(tmp_path, VALID.encode() + b"    title: Caf\xe9 Train\n")  # Latin-1, as some editors save
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kpack.yaml: line 6 is not UTF-8 text (byte 0xe9); save the file as UTF-8"]
    assert load_config(_write(tmp_path, b"\xef\xbb\xbf" + VALID.encode())).kaggle_user == "alice"  # a BOM is fine
    assert path.exists()


def test_a_missing_kernel_section_names_the_config_file_given(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(VALID)
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "infer", "--config", str(other)],
                            cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {other}: no kernels.infer section; add one with at least 'entry:'"]


@pytest.mark.parametrize("metric, higher", [
    ("F2 (mean over rows)", True), ("AUC (mean over columns)", True), ("Quadratic Weighted Kappa", True),
    ("MAP@5", True), ("RMSE", False), ("Root Mean Squared Logarithmic Error", False), ("Log loss", False),
    ("Mean Columnwise MAE", False), ("SMAPE", False), ("Weighted distance", False), ("", True)])
def test_which_way_a_score_is_better_from_the_metric_name_or_the_config(metric, higher):
    from packager.config import higher_is_better

    cfg = parse_config({"competition": "digits-c", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}}})
    assert higher_is_better(cfg, metric) is higher
    for direction in ("higher", "lower"):
        assert higher_is_better(cfg.model_copy(update={"score_direction": direction}), metric) is (direction == "higher")


def test_the_local_metrics_names_say_their_direction():
    """kpack reads a metric's direction from its name alone (the API has no field for it): each local metric's
    name must read the way it scores."""
    from packager.config import higher_is_better
    from packager.localkaggle.scoring import METRICS

    cfg = parse_config({"competition": "digits-c", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}}})
    assert {name: higher_is_better(cfg, m.title) for name, m in METRICS.items()} == {
        name: m.higher_is_better for name, m in METRICS.items()}
