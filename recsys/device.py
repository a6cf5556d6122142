"""The one capability check that decides CPU or GPU paths."""

from __future__ import annotations

import logging
from functools import lru_cache

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    pass


def torch_device(preference: str = "auto"):  # type: ignore[no-untyped-def]
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a clear error."""
    import torch

    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise DeviceError("train.device=cuda but torch sees no CUDA device; use auto or cpu")
    return torch.device("cpu")


@lru_cache(maxsize=1)
def faiss_num_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


@lru_cache(maxsize=1)
def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401

        return True
    except ImportError:
        return False


def describe() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "faiss": faiss_available(),
        "faiss_gpus": faiss_num_gpus(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
