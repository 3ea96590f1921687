"""JPEG decoding on a CUDA card's hardware JPEG engines (NVJPG: A100, H100, H200) through NVIDIA's nvImageCodec.

The fast backend's other GPU decoder, TorchCodec's nvJPEG, decodes on the streaming multiprocessors and so takes
turns with the pose network; the engines decode beside it. nvImageCodec is optional (``nvidia-nvimgcodec-cu13``
or ``-cu12`` to match the CUDA runtime, with ``nvidia-nvjpeg``); its API facts come from its documentation
(``Decoder``, ``Backend``, ``DecodeParams``, ``Image.__cuda_array_interface__``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

JPEG_DECODERS = ("nvjpeg", "engines")


class EngineDecoder:
    """Batched JPEG decode on ``device``'s JPEG engines into ``(3, H, W)`` uint8 RGB tensors, called as the torch
    decoder is: a list of 1-D uint8 tensors of file bytes. A file the engines cannot decode (progressive, say)
    comes back as None, for the caller's CPU decoder; ``decoded`` and ``refused`` count the files. Raises
    ``PipelineError`` when nvImageCodec is missing or the card has no JPEG engines."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise PipelineError(f"jpeg_decoder 'engines' decodes on a CUDA card's JPEG engines; the device is {device}")
        try:
            from nvidia import nvimgcodec
        except ImportError as exc:
            raise PipelineError("jpeg_decoder 'engines' needs nvImageCodec: pip install nvidia-nvimgcodec-cu13 "
                                f"nvidia-nvjpeg (-cu12 for CUDA 12) ({exc})") from None
        import torch

        self.device = device
        self.decoded = self.refused = 0
        self._count = threading.Lock()
        self._index = device.index if device.index is not None else torch.cuda.current_device()
        self._nvimgcodec, self._local = nvimgcodec, threading.local()  # a decoder per producer thread
        try:
            self._decoder()
        except Exception as exc:  # noqa: BLE001 - the library's own error types; the reason is passed on
            raise PipelineError(f"jpeg_decoder 'engines': nvImageCodec has no hardware JPEG decoder on {device} "
                                f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
        # planar RGB as TorchCodec's decode_jpeg gives; the backend never sends a file with an EXIF rotation here
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               sample_format=nvimgcodec.SampleFormat.P_RGB)

    def _decoder(self):
        """This thread's decoder, made on its first call."""
        if not hasattr(self._local, "decoder"):
            codec = self._nvimgcodec
            self._local.decoder = codec.Decoder(device_id=self._index, backends=[codec.Backend(codec.HW_GPU_ONLY)])
        return self._local.decoder

    def __call__(self, blobs: list[torch.Tensor], stream: torch.cuda.Stream | None = None
                 ) -> list[torch.Tensor | None]:
        """The decoded images, queued on ``stream`` (the current one if None); a call that fails as a whole raises
        ``RuntimeError``, as TorchCodec's does."""
        import torch

        stream = stream if stream is not None else torch.cuda.current_stream(self.device)
        try:
            images = self._decoder().decode([blob.numpy() for blob in blobs], params=self._params,
                                            cuda_stream=stream.cuda_stream)
        except Exception as exc:  # noqa: BLE001 - as nvJPEG's: the caller decodes the call's files on the CPU
            raise RuntimeError(f"nvImageCodec failed a decode call: {type(exc).__name__}: {exc}") from exc
        refused = sum(image is None for image in images)
        with self._count:
            self.decoded, self.refused = self.decoded + len(images) - refused, self.refused + refused
        # the tensors share the decoder's output buffers and keep them alive
        return [None if image is None else torch.as_tensor(image, device=self.device) for image in images]
