"""`make demo`: the whole flow on the embedded local Kaggle, with the repository's own kpack.yaml.

1. start the local Kaggle (or use the one already serving kpack.yaml's local.root on local.port);
2. create the demo competition there when it is missing (packager.democomp: multi-label digits, scored by
   the local scorer);
3. `kpack push train`: build the kernel and the datasets, upload what changed, run it, follow its sessions,
   download the output to runs/, record the ledger. Each train session stops after DEMO_SESSION_STEPS
   optimizer steps (KPACK_DEMO_SESSION_STEPS to change, 0 for none) so that the run spans sessions on any
   machine, as a long run does under Kaggle's 12 h limit: the kit checkpoints, kpack pushes the next session
   and it resumes from the checkpoint;
4. `kpack push validate` (OOF F2, thresholds), `kpack push infer` (submission.csv), then `kpack submit`,
   which prints the leaderboard score;
5. print the ledger rows of this demo.

The backend is always the local one here, whatever kpack.yaml says.
"""
from __future__ import annotations

from pathlib import Path

from packager import kaggle_api, ledger
from packager.config import load_config
from packager.errors import env_number

DEMO_DATA = Path("build") / "demo-competition"
DEMO_SESSION_STEPS = 100  # of the demo kit's 225: three sessions


def with_short_train_sessions(cfg):
    """cfg whose train sessions stop after KPACK_DEMO_SESSION_STEPS steps (default DEMO_SESSION_STEPS; 0: as is).

    Steps, not seconds: a time limit short enough to split the demo's few seconds of training would leave
    no time to train on a machine whose start-up (importing torch) is slower than here."""
    steps = env_number("KPACK_DEMO_SESSION_STEPS", DEMO_SESSION_STEPS, int)
    if not steps or "train" not in cfg.kernels:
        return cfg
    print(f"demo: each train session stops after {steps} steps, as if Kaggle's session limit were that short: "
          "the kit checkpoints and kpack pushes the next session, which resumes from it")
    kit = {**cfg.kit, "session": {**cfg.kit.get("session", {}), "max_steps": steps}}
    return cfg.model_copy(update={"kit": kit})


def ensure_competition(cfg) -> bool:
    """Create the demo competition on the local Kaggle when it is missing; True when it was created."""
    from packager.democomp import generate
    from packager.localkaggle.store import Store

    store = Store(Path(cfg.local.root).resolve())
    if store.competition(cfg.competition):
        print(f"competition {cfg.competition}: already on the local Kaggle")
        return False
    made = generate(DEMO_DATA, image_size=32)  # small images: the demo trains on a CPU
    store.create_competition(cfg.competition, made.data_dir, made.solution_csv, code=True,
                             title=f"{cfg.competition.replace('-', ' ').title()} (kpack demo)")
    print(f"competition {cfg.competition}: created on the local Kaggle from {made.data_dir}")
    return True


def _show_output(path: Path | None) -> None:
    if path is None:
        return
    print(f"output of the last session ({path}):")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        print(f"  {file.relative_to(path)}  ({file.stat().st_size} bytes)")
    for name in ("state.json", "metrics.json", "oof_scores.json"):
        hits = sorted(path.rglob(name), key=lambda p: len(p.parts))
        if hits:
            text = hits[0].read_text()
            print(f"  {name}: {text.strip()[:600]}")


def run_demo(config_path: str | None = None) -> None:
    from packager.push import push_kernel

    cfg = load_config(config_path)
    if cfg.backend != "local":
        print(f"demo: kpack.yaml says backend: {cfg.backend}; the demo runs on the local Kaggle")
        cfg = cfg.model_copy(update={"backend": "local"})
    kaggle_api.connect(cfg)  # starts the local Kaggle when it is not running
    print(f"local Kaggle: http://127.0.0.1:{cfg.local.port} (state in {Path(cfg.local.root).resolve()})")
    ensure_competition(cfg)
    start = len(ledger.read())

    train = push_kernel(with_short_train_sessions(cfg), "train", wait=True)
    _show_output(train.output)

    # validate (OOF scores, thresholds), then infer (TTA, fold blend, submission.csv), then submit
    for kind in ("validate", "infer"):
        if kind in cfg.kernels:
            result = push_kernel(cfg, kind, wait=True)
            _show_output(result.output)
    if "infer" in cfg.kernels:
        from packager.submit import submit

        submit(cfg, "kpack demo")

    rows = ledger.read()[start:]
    print(f"ledger ({ledger.ledger_path()}; `kpack ledger` shows it), this demo's rows:")
    print(ledger.table(rows))
    from packager.localkaggle.client_env import health

    pid = (health(cfg.local.port) or {}).get("pid")
    print(f"the local Kaggle keeps running for `kpack status|output KIND` (stop it with: kill {pid})"
          if pid else "")
