"""Where the frozen model runs and in which precision: `--device` and `--dtype`.

Operators, their optimizer and recovery always stay in float32; only the frozen model (and the
activations it hands over) take the chosen dtype. Methods other than STRIDE run where their
libraries run them: on the CPU in float32.
"""

from __future__ import annotations

import torch

from stride.errors import StrideError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_METHODS = ("stride",)  # methods whose every stage follows the model to another device or dtype


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" (CUDA when present, else the CPU), "cpu", "cuda" or "cuda:N"; a CUDA device that is
    not there is a StrideError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise StrideError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise StrideError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise StrideError(f"--device {name} asks for CUDA, but this machine has no usable CUDA device "
                          "(or torch was built without CUDA); use --device cpu")  # fmt: skip
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise StrideError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")  # fmt: skip
    return device


def resolve_dtype(name: str = "float32") -> torch.dtype:
    """The torch dtype named float32, bfloat16 or float16."""
    if name not in DTYPES:
        raise StrideError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def method_placement(method: str, device: str, dtype: str,
                     partner: str | None = None) -> tuple[torch.device, torch.dtype]:  # fmt: skip
    """Device and dtype of `method`'s frozen model. STRIDE takes what is asked; any other method runs
    on the CPU in float32, and asking it for another device or dtype is a StrideError. STRIDE with a
    `partner` method runs where its partner runs."""
    resolved_dtype = resolve_dtype(dtype)
    if partner is not None and method in DEVICE_METHODS:
        try:
            return method_placement(partner, device, dtype)
        except StrideError as exc:
            raise StrideError(f"{exc} (STRIDE's partner {partner!r} runs with it)") from None
    if method in DEVICE_METHODS:
        return resolve_device(device), resolved_dtype
    if device not in ("auto", "cpu"):
        resolve_device(device)  # an unknown or absent device is reported as such first
        raise StrideError(f"--device {device}: method {method!r} runs on the CPU; only "
                          f"{', '.join(DEVICE_METHODS)} runs on other devices")  # fmt: skip
    if resolved_dtype != torch.float32:
        raise StrideError(f"--dtype {dtype}: method {method!r} runs in float32; only "
                          f"{', '.join(DEVICE_METHODS)} takes another dtype")  # fmt: skip
    return torch.device("cpu"), resolved_dtype


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device
