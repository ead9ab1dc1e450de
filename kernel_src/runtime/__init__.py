"""What every kernel does before its entry runs (stdlib only: nothing else is importable yet).

`bootstrap(config)` first checks that the secrets the kernel needs are attached (attached), then makes the
bundled wheels importable (deps) when the project has a wheels dataset, then readies the weights (weights) when
it has a weights dataset. The generated kernel script calls it, then
imports the entry and calls main(config).
"""
from __future__ import annotations


def bootstrap(config: dict) -> None:
    from kernel_src.runtime import attached

    attached.check(config)  # before anything is imported or unpacked: one line naming the secret and the kernels
    datasets = config.get("datasets") or {}
    if datasets.get("wheels"):
        from kernel_src.runtime import deps

        deps.activate(config)
    if datasets.get("weights"):
        from kernel_src.runtime import weights

        weights.prepare(config)
