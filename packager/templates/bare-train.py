"""The train kernel's entry: kpack packs this folder into one script, and the kernel calls main(config).

`config` is kpack.yaml as validated, plus "kernel": the kind that runs. The inputs (the competition's files,
datasets, earlier kernels' output) are mounted read-only: find them through kpack_runtime.inputs, never by a
hard-coded /kaggle/input path (Kaggle mounts them in two layouts, and the local Kaggle under its own root).
Whatever main writes under working/ is the kernel's output, downloaded to runs/<slug>/v<N>/.
"""
import json

from kpack_runtime import inputs


def main(config):
    data = inputs.find_input(config["competition"], "competition")
    if data is None:
        raise SystemExit(f"competition {config['competition']} is not mounted: name it in "
                         "kernels.train.sources.competitions")
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    print(f"{len(files)} files in {data}, e.g. {files[:3]}", flush=True)

    working = inputs.working_dir()
    (working / "files.json").write_text(json.dumps(files))
    # metrics.json: its first number is the run's CV score in the ledger
    (working / "metrics.json").write_text(json.dumps({"cv_score": 0.0, "files": len(files)}))
    # state.json with done: false asks kpack to push another session that resumes from this one's output
    (working / "state.json").write_text(json.dumps({"done": True}))
