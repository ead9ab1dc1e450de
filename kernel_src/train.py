"""Training kernel entry: `main(config)` trains `config["kit"]`, or goes on training where the last session stopped.

The session limit is kernels.train.session_hours (KPACK_SESSION_SECONDS overrides it for local runs and
tests); the run stops early enough to checkpoint, and writes state.json saying whether training is done,
so the packager knows to push the next session with this one's output as an input.

Local use (outside a kernel): python -m kernel_src.train kpack.yaml  [KPACK_KAGGLE_ROOT=... for the folders]
"""
from __future__ import annotations

from . import clock  # first: the session clock runs from process start

import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

from . import entrypoint, settings  # noqa: E402


def main(config: dict, working: Optional[Path] = None) -> dict:
    from . import engine
    from kpack_runtime import inputs, launch

    def train() -> dict:
        kit = settings.from_config(config)
        budget = clock.session_seconds(config, "train")
        session = clock.SessionClock(budget, kit.session.margin_seconds, max_steps=kit.session.max_steps)
        if os.environ.get("RANK", "0") == "0":
            print(f"[kpack] train: session budget {budget:.0f} s (margin {session.margin:.0f} s, plus saving the "
                  f"output at {session.output_s_per_gb:g} s/GB), {session.elapsed():.1f} s gone at start "
                  f"(counted from the {session.started_from})", flush=True)
        return engine.run(kit, config, working or inputs.working_dir(), session)

    # one process per GPU (kit.processes, KPACK_PROCESSES overrides): forked here, before anything initialises
    # CUDA; the settings are read here first (stdlib only), so a bad value is one line before any fork
    processes = entrypoint.one_line_errors(lambda: settings.from_config(config).processes)
    return launch.per_device(entrypoint.one_line_errors, train, processes=launch.process_count(processes))


if __name__ == "__main__":
    entrypoint.from_command_line(main)
