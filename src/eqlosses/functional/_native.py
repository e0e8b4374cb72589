"""The native CPU kernel of the cross-entropy losses, compiled from C++ on first use.

``csrc/softmax_rows.cpp`` computes a row's adjusted softmax, loss, gradient and
statistics with one read of the row's logits and one write of its gradient, where the
PyTorch operations in :mod:`eqlosses.functional.softmax` take several passes and a few
dozen operations; on a CPU it is the difference between being slower than
``F.cross_entropy`` and being faster. It is
built with :func:`torch.utils.cpp_extension.load` the first time a loss can use it (about
20 seconds, once per machine: the build is cached in ``$TORCH_EXTENSIONS_DIR``) and
needs ``ninja`` (a dependency of the package) and a C++ compiler with OpenMP (GCC). It is
built on Linux only; elsewhere, or where the build fails (the losses then warn once), the
losses run on PyTorch operations, with the same results up to rounding.
``EQLOSSES_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["NATIVE_ENVIRONMENT_VARIABLE", "native_kernel_status", "softmax_rows_kernel"]

NATIVE_ENVIRONMENT_VARIABLE = "EQLOSSES_NATIVE"

_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "softmax_rows.cpp"

# The vector instructions the build may use: those PyTorch's own CPU kernels chose here.
_CAPABILITY_FLAGS = {
    "AVX512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512",
    ],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}  # fmt: skip

# "kernel": the loaded operator, or None where it is off or could not be built; absent
# until the first call decides.
_STATE: dict[str, Callable[..., Any] | None] = {}

_LOG = logging.getLogger("eqlosses")


def softmax_rows_kernel() -> Callable[..., Any] | None:
    """The native operator ``softmax_rows(logits, adjustment, labels, weight, scale_tensor,
    scale, grad)`` (see ``csrc/softmax_rows.cpp``), or ``None`` where it is turned off or
    could not be built (warned once)."""
    if "kernel" in _STATE:
        return _STATE["kernel"]
    kernel = None
    if sys.platform.startswith("linux") and os.environ.get(NATIVE_ENVIRONMENT_VARIABLE) != "0":
        try:
            kernel = _build()
        except Exception as error:  # any failure leaves the PyTorch path
            warnings.warn(
                f"eqlosses: the native CPU kernel of the softmax losses could not be built "
                f"({type(error).__name__}: {str(error).strip()[:300]}); they run on PyTorch "
                f"operations instead: the same results up to rounding, more slowly. It "
                f"needs ninja (pip install ninja) and a C++ compiler; set "
                f"{NATIVE_ENVIRONMENT_VARIABLE}=0 to skip it without this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
    _STATE["kernel"] = kernel
    return kernel


def native_kernel_status() -> str:
    """What the softmax losses run on here, on the CPU: the native kernel, with the vector
    instructions it was built for, or PyTorch operations. Builds the kernel if that is due
    (see *The native CPU kernel* in the installation guide)."""
    if softmax_rows_kernel() is None:
        return "PyTorch operations (the native kernel is off or could not be built)"
    return f"the native kernel ({torch.backends.cpu.get_cpu_capability()})"


def _build() -> Callable[..., Any]:
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    flags = _CAPABILITY_FLAGS.get(capability, [])
    _LOG.info("eqlosses: building the native CPU kernel (%s), once per machine", capability)
    cpp_extension.load(
        name=f"eqlosses_native_{capability.lower()}",
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-fopenmp", *flags],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    kernel: Callable[..., Any] = torch.ops.eqlosses_native.softmax_rows
    return kernel
