"""Device selection: --device auto|cpu|cuda|cuda:N|mps."""

from __future__ import annotations

import contextlib
import re

import torch

from .errors import UserError


def local_rank() -> int | None:
    """This process's GPU slot under torchrun (LOCAL_RANK with WORLD_SIZE > 1), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return None


def resolve_device(spec: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an unavailable device is a UserError.

    Under torchrun, `auto` and `cuda` mean this process's own GPU, cuda:LOCAL_RANK.
    """
    spec = (spec or "auto").strip().lower()
    if spec in ("auto", "cuda") and torch.cuda.is_available() and local_rank() is not None:
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError("--device mps: no MPS device is available on this machine")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m:
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine (try --device cpu or auto)")
        index = int(m.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


@contextlib.contextmanager
def one_blas_thread(torch_cpu: bool = False):
    """A context in which BLAS/LAPACK (numpy's and torch's CPU kernels) run on one thread: after torch's
    OpenMP pool has run, more threads contend with its spinning workers, and one small dense factorisation
    (a 768 x 768 eigh) takes many times longer on a 2-core machine. numpy's BLAS is limited through
    threadpoolctl. torch's LAPACK is not visible to threadpoolctl and follows torch's own thread count:
    `torch_cpu` limits that too (only around a factorisation: every torch CPU op in it runs on one thread)."""
    from threadpoolctl import threadpool_limits   # a dependency of scikit-learn

    threads = torch.get_num_threads()
    if torch_cpu:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        if torch_cpu:
            torch.set_num_threads(threads)
