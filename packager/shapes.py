"""Kaggle's machine shapes (the `machine_shape` / `--accelerator` names) and their session limits: one table,
used by the config, the kernel metadata and the local Kaggle.

Names and limits from ../shared/kaggle-facts.md (December 2026): the ids the kaggle client's users report
for `--accelerator`, 12 h per GPU/CPU session and 9 h per TPU session. Kaggle has no call that lists them, so
a name missing here may still be valid (new hardware): kpack warns and pushes it as given; the local Kaggle
refuses it, as Kaggle refuses a name it does not know.
"""
from __future__ import annotations

from dataclasses import dataclass

CPU = "None"  # kpack's name for no accelerator; kernel-metadata.json then sets neither enable_gpu nor enable_tpu
DEFAULT_GPU = "NvidiaTeslaT4"  # what Kaggle runs when enable_gpu is set without a machine shape
DEFAULT_TPU = "TpuV5E8"  # a guess: what Kaggle runs for enable_tpu without a machine shape
GPU_HOURS = 12.0
TPU_HOURS = 9.0


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "gpu", "tpu" or "cpu"
    label: str  # what the user sees on Kaggle's accelerator menu
    runs_as: str | None = None  # a retired shape: the shape its sessions actually get

    @property
    def limit_hours(self) -> float:
        return TPU_HOURS if self.kind == "tpu" else GPU_HOURS


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape(CPU, "cpu", "CPU only"),
    Shape("NvidiaTeslaT4", "gpu", "T4 x2"),
    Shape("NvidiaTeslaT4Highmem", "gpu", "T4 x2, high memory"),
    Shape("NvidiaL4", "gpu", "L4 x4"),
    Shape("NvidiaL4X1", "gpu", "L4 x1"),
    Shape("NvidiaTeslaA100", "gpu", "A100"),
    Shape("NvidiaH100", "gpu", "H100"),
    Shape("NvidiaRtxPro6000", "gpu", "RTX Pro 6000"),
    Shape("TpuV38", "tpu", "TPU v3-8"),
    Shape("Tpu1VmV38", "tpu", "TPU VM v3-8"),
    Shape("TpuV5E8", "tpu", "TPU v5e-8"),
    Shape("TpuV6E8", "tpu", "TPU v6e-8"),
    Shape("NvidiaTeslaP100", "gpu", "P100 (retired)", runs_as="NvidiaTeslaT4"),
)}


def known(name: str) -> Shape | None:
    return SHAPES.get(name)


def guess(name: str) -> Shape:
    """The table's shape, or for a name it lacks a guess from the name (TPU ids start with 'Tpu')."""
    return SHAPES.get(name) or Shape(name, "tpu" if name.lower().startswith("tpu") else "gpu", name)


def effective(name: str) -> Shape:
    """The shape a session asking for `name` runs on (a retired one runs on its successor)."""
    shape = guess(name)
    return SHAPES[shape.runs_as] if shape.runs_as else shape


def quota_of(name: str) -> str | None:
    """'GPU' or 'TPU': the weekly quota a session on `name` spends; None for a CPU session."""
    kind = guess(name).kind
    return kind.upper() if kind in ("gpu", "tpu") else None


def names() -> list[str]:
    """The shapes Kaggle offers today, retired ones left out."""
    return [s.name for s in SHAPES.values() if not s.runs_as]


def warning(name: str) -> str | None:
    """One line for a shape kpack pushes as given but that will not run as named, or None."""
    shape = known(name)
    if shape is None:
        return (f"'{name}' is not a machine shape kpack knows ({', '.join(names())}); it is pushed as given, "
                "and Kaggle refuses names it does not know")
    if shape.runs_as:
        return f"Kaggle retired the {shape.label.split()[0]}: sessions asking for {name} run on " \
               f"{SHAPES[shape.runs_as].label} ({shape.runs_as})"
    return None


def from_request(machine_shape: str | None, enable_gpu: bool, enable_tpu: bool) -> str:
    """The shape a SaveKernel request asks for: its machineShape, else what the enable_* flags imply."""
    if machine_shape:
        return machine_shape
    return DEFAULT_GPU if enable_gpu else DEFAULT_TPU if enable_tpu else CPU
