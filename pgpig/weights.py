"""Reading pretrained weights from user files safely: tensors only (``torch.load(weights_only=True)`` or
safetensors), one-line errors naming the file, the reason and where the right file comes from."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch

from pgpig.errors import TrainError

__all__ = ["download_state_dict", "read_state_dict"]


def read_state_dict(path: Path, what: str, help_text: str, inner: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` / ``.pt`` (unpickled with ``weights_only=True``) or ``.safetensors`` file.

    ``what`` names the weights in errors ("VGG-19", "FID Inception"); ``help_text`` says how to get the right file.
    ``inner``: a file holding a dict with this key (a training checkpoint's ``ema``) gives that key's value.
    Anything but a flat ``{str: Tensor}`` dict is a ``TrainError``.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals, corrupt files and format errors alike
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainError(f"cannot read {what} weights {path} as a state dict of tensors ({reason}): {help_text}") \
            from None
    if inner is not None and isinstance(state, dict) and isinstance(state.get(inner), dict):
        state = state[inner]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise TrainError(f"{what} weights {path} are not a state dict of tensors: {help_text}")
    return state


def download_state_dict(url: str) -> dict[str, torch.Tensor]:
    """``torch.hub.load_state_dict_from_url`` into torch hub's cache (hash-checked, ``weights_only=True``).

    torch hub prints "Downloading: URL" on standard output before it tries; that line goes to standard error when the
    download works and is dropped when it fails (offline), where the caller's one-line error says what to do
    instead; standard output stays the command's own. Exceptions propagate."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                   weights_only=True)
    sys.stderr.write(captured.getvalue())
    return state
