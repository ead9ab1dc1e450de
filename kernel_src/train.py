"""Training kernel entry: `main(config)` trains `config["kit"]`, or goes on training where the last session stopped.

The session limit is kernels.train.session_hours (KPACK_SESSION_SECONDS overrides it for local runs and
tests); the run stops early enough to checkpoint, and writes state.json saying whether training is done,
so the packager knows to push the next session with this one's output as an input.

Local use (outside a kernel): python -m kernel_src.train kpack.yaml  [KPACK_KAGGLE_ROOT=... for the folders]
"""
from __future__ import annotations

from kernel_src import clock  # first: the session clock runs from process start

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

from kernel_src import settings  # noqa: E402


def main(config: dict, working: Optional[Path] = None) -> dict:
    from kernel_src import checkpoint, engine, models
    from kernel_src.runtime import inputs

    try:
        kit = settings.from_config(config)
        budget = clock.session_seconds(config, "train")
        session = clock.SessionClock(budget, kit.session.margin_seconds, max_steps=kit.session.max_steps)
        print(f"[kpack] train: session budget {budget:.0f} s (margin {session.margin:.0f} s), "
              f"{session.elapsed():.1f} s gone at start", flush=True)
        return engine.run(kit, config, working or inputs.working_dir(), session)
    except (settings.SettingsError, models.WeightsError, checkpoint.CheckpointError, FileNotFoundError) as exc:
        print(f"[kpack] error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    import yaml

    with open(sys.argv[1] if len(sys.argv) > 1 else "kpack.yaml") as f:
        main(yaml.safe_load(f))
