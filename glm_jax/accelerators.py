"""Accelerator facts, one table: peak dense bf16 FLOP/s, HBM size and bandwidth, interconnect
bandwidth and JAX devices per chip, keyed by the `device_kind` jax (or libtpu's topology) reports.
The MFU estimate of training (glm_jax.train.metrics), the AOT planner (glm_jax.aot) and the
benchmarks all read it here.

Sources (public pages):
  v4    cloud.google.com/tpu/docs/v4: 275 TFLOP/s, 32 GiB, 1200 GBps; ICI 2.7e11 B/s one way
  v5e   cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GB, 819 GBps, ICI 400 GBps bidirectional
  v5p   cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 95 GiB, 2765 GBps, ICI 1200 GBps bidirectional
  v6e   cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB, 1638 GBps, ICI 800 GBps bidirectional
  TPU7x (Ironwood) cloud.google.com/tpu/docs/tpu7x: 2307 TFLOP/s bf16, 192 GiB, 2 TensorCores
        (two JAX devices a chip); HBM 7.2 TB/s and ICI 1.2 TB/s bidirectional as announced at
        Cloud Next 25
  NVIDIA data sheets (SXM, dense, no sparsity): H100 989.5 TFLOP/s, 80 GB, 3.35 TB/s; H200 989.5,
        141 GB, 4.8 TB/s; A100 312, 40 / 80 GB, 1.555 / 2.039 TB/s; NVLink 900 GB/s (H100, H200)
        and 600 GB/s (A100) bidirectional
v4 and v5p run a chip's two TensorCores as one megacore device. Interconnect figures are one way
(half the bidirectional figure).
"""

from __future__ import annotations

import dataclasses

GiB = 1024 ** 3
GB = 10 ** 9


@dataclasses.dataclass(frozen=True)
class Accelerator:
    peak_tflops: float  # dense bf16, per chip
    hbm_bytes: int  # per chip
    hbm_bandwidth: float  # B/s per chip
    interconnect_bandwidth: float  # B/s per chip, all links, one way (ICI on TPU, NVLink on GPU)
    devices_per_chip: int = 1

    @property
    def peak_flops_per_device(self) -> float:
        return self.peak_tflops * 1e12 / self.devices_per_chip


_V5E = Accelerator(197.0, 16 * GiB, 8.19e11, 2.0e11)
_V5P = Accelerator(459.0, 95 * GiB, 2.765e12, 6.0e11)
_V6E = Accelerator(918.0, 32 * GiB, 1.638e12, 4.0e11)
_H100 = Accelerator(989.5, 80 * GB, 3.35e12, 4.5e11)
_A100_80 = Accelerator(312.0, 80 * GB, 2.039e12, 3.0e11)

ACCELERATORS = {
    "TPU v4": Accelerator(275.0, 32 * GiB, 1.2e12, 2.7e11),
    "TPU v5 lite": _V5E, "TPU v5e": _V5E,
    "TPU v5": _V5P, "TPU v5p": _V5P,
    "TPU v6 lite": _V6E, "TPU v6e": _V6E,
    "TPU7x": Accelerator(2307.0, 192 * GiB, 7.2e12, 6.0e11, devices_per_chip=2),
    "NVIDIA H100 80GB HBM3": _H100, "NVIDIA H100": _H100,
    "NVIDIA H200": Accelerator(989.5, 141 * GB, 4.8e12, 4.5e11),
    "NVIDIA A100-SXM4-80GB": _A100_80,
    "NVIDIA A100-SXM4-40GB": Accelerator(312.0, 40 * GB, 1.555e12, 3.0e11),
}


def lookup(device_kind: str) -> Accelerator | None:
    """The facts of a device kind, or None for one we have no figures for (a CPU, a new chip)."""
    return ACCELERATORS.get(device_kind)
