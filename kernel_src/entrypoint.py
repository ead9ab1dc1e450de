"""What the entries (train, validate, infer) share: a user's mistake ends the kernel with one line and exit
code 2, not a traceback; and the local command line `python -m kernel_src.<entry> kpack.yaml`."""
from __future__ import annotations

import sys
from typing import Any, Callable


def one_line_errors(run: Callable[[], Any], also: tuple[type[BaseException], ...] = ()) -> Any:
    from . import checkpoint, models, settings

    try:
        return run()
    except (settings.SettingsError, models.WeightsError, checkpoint.CheckpointError, FileNotFoundError,
            *also) as exc:
        from kpack_runtime import launch

        launch.report_error(f"[kpack] error: {own_line(exc)}")  # once, when every rank of a launch fails alike
        raise SystemExit(2) from None


def own_line(exc: BaseException) -> str:
    """The error's own message: one a DataLoader worker raised comes back with the worker's traceback before it
    ("Caught FileNotFoundError in DataLoader worker process 0. Original Traceback ..."), its last line ours."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(f"{type(exc).__name__}: ") else last


def from_command_line(main: Callable[[dict], Any]) -> None:
    import yaml

    with open(sys.argv[1] if len(sys.argv) > 1 else "kpack.yaml") as f:
        main(yaml.safe_load(f))
