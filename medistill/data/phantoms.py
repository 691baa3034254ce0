"""Synthetic MRI-like head phantoms with lesion masks, written as a data-set folder.

``generate_phantoms(out_dir, n)`` writes ``out_dir/images/phantom_0000.png`` (8-bit grey)
and ``out_dir/masks/phantom_0000.png`` plus ``README.md`` and ``phantoms.json``. Each
phantom is an axial T1-like slice: scalp, a dark skull ring, CSF, grey and white matter
with a folded boundary, two ventricles, 0-3 irregular lesions that are brighter or darker
than the tissue around them, a smooth multiplicative bias field and Rician noise.

Phantom ``i`` is drawn from a random generator seeded with ``(seed, i, version)``, so it
is the same whatever ``n`` is. The module also holds the folder preparation and the 8/16-bit
PNG writer that :mod:`medistill.data.sources` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medistill.errors import MedistillError
from medistill.fileio import atomic_path, write_json_atomic, write_text_atomic

GENERATOR_VERSION = 1
CLASS_NAMES = ("background", "brain", "csf", "lesion")
BACKGROUND, BRAIN, CSF, LESION = 0, 1, 2, 3
MIN_SIZE = 32
MAX_LESIONS = 3

# T1-like tissue intensities before bias field, noise and the 8-bit scale.
_SCALP, _SKULL, _CSF, _GREY, _WHITE = 0.80, 0.10, 0.16, 0.55, 0.78
_TO_8BIT = 180.0  # white matter lands near 140 of 255, bright lesions rarely clip


@dataclass(frozen=True)
class Phantom:
    """One synthetic slice: ``image`` uint8 (S, S); ``labels`` uint8 (S, S) in 0..3."""

    image: np.ndarray
    labels: np.ndarray
    lesions: int

    @property
    def lesion_mask(self) -> np.ndarray:
        """Binary lesion mask, bool (S, S)."""
        return self.labels == LESION


# ---------------------------------------------------------------------------
# Writing a data-set folder (shared with medistill.data.sources)
# ---------------------------------------------------------------------------


def prepare_output_folder(out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Create ``out_dir/images`` and ``out_dir/masks`` and return them.

    A folder that exists and is not empty is refused unless ``overwrite``; then the PNG
    files in its ``images/`` and ``masks/`` are deleted first, so the folder holds
    exactly the new export (other files are left alone).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedistillError(f"{out_dir} is a file, not a folder: choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise MedistillError(
                f"{out_dir} is not empty: choose a new or empty folder, or pass "
                "overwrite=True (--overwrite) to replace the PNG files in its images/ and masks/"
            )
        for sub in ("images", "masks"):
            for old in (out_dir / sub).glob("*.png"):
                old.unlink()
    image_dir, mask_dir = out_dir / "images", out_dir / "masks"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedistillError(f"cannot create {image_dir} or {mask_dir}: {err}") from err
    return image_dir, mask_dir


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write a 2-D uint8 or uint16 array as a grey PNG."""
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png needs a 2-D uint8/uint16 array, "
                         f"got {array.dtype} {array.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise MedistillError(f"OpenCV could not encode {path} as PNG")
    with atomic_path(path) as temporary:
        temporary.write_bytes(encoded.tobytes())


# ---------------------------------------------------------------------------
# Drawing one phantom
# ---------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation, float32 (S, S)."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return smooth / (float(smooth.std()) + 1e-6)


def _ellipse_distance(p: np.ndarray, q: np.ndarray, centre: tuple[float, float],
                      axes: tuple[float, float], angle: float) -> np.ndarray:
    """Normalised squared distance to an ellipse centre: < 1 inside the ellipse."""
    dp, dq = p - centre[0], q - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    along, across = cos * dp + sin * dq, -sin * dp + cos * dq
    return (along / axes[0]) ** 2 + (across / axes[1]) ** 2


@dataclass
class _Head:
    """Head coordinates (pixels, rotated with the head) and the radial head distance."""

    p: np.ndarray  # left-right axis of the head
    q: np.ndarray  # anterior-posterior axis (negative = anterior, towards the top)
    r: np.ndarray  # 1.0 on the outer scalp boundary
    half_width: float
    half_height: float


def _draw_head(rng: np.random.Generator, size: int) -> _Head:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size * (0.5 + rng.uniform(-0.03, 0.03)), size * (0.5 + rng.uniform(-0.03, 0.03))
    angle = np.deg2rad(rng.uniform(-10, 10))
    cos, sin = np.cos(angle), np.sin(angle)
    p = cos * (xx - cx) + sin * (yy - cy)
    q = -sin * (xx - cx) + cos * (yy - cy)
    half_width, half_height = size * rng.uniform(0.34, 0.40), size * rng.uniform(0.41, 0.46)
    pn, qn = p / half_width, q / half_height
    theta = np.arctan2(qn, pn)
    # A few low angular harmonics make every skull outline a little different.
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0.0, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(pn**2 + qn**2) / wobble
    return _Head(p, q, r, half_width, half_height)


def _ventricles(rng: np.random.Generator, head: _Head, size: int) -> np.ndarray:
    """Two tilted ellipses either side of the midline (the lateral ventricles), bool."""
    scale = rng.uniform(0.45, 1.1)  # slices above the ventricles show them small
    gap = head.half_width * rng.uniform(0.06, 0.12)
    width = head.half_width * rng.uniform(0.07, 0.12) * scale
    height = head.half_height * rng.uniform(0.18, 0.30) * scale
    tilt = np.deg2rad(rng.uniform(10, 28))
    centre_q = head.half_height * rng.uniform(-0.12, 0.02)
    wobble = 0.25 * _smooth_noise(rng, size, max(1.0, size / 40))
    left = _ellipse_distance(head.p, head.q, (-gap - width, centre_q), (width, height), -tilt)
    right = _ellipse_distance(head.p, head.q, (gap + width, centre_q), (width, height), tilt)
    return (np.minimum(left, right) + wobble) < 1.0


def _tissue(rng: np.random.Generator, head: _Head, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free T1-like intensities (float32) and the anatomy label map (uint8)."""
    skull_outer = rng.uniform(0.90, 0.94)
    skull_inner = skull_outer - rng.uniform(0.06, 0.09)
    brain_edge = skull_inner - rng.uniform(0.02, 0.04)
    folds = _smooth_noise(rng, size, max(1.0, size / 28))
    sulci = _smooth_noise(rng, size, max(0.8, size / 60))

    intracranial = head.r < skull_inner
    brain = (head.r + 0.03 * sulci) < brain_edge
    white = (head.r + 0.09 * folds) < brain_edge - rng.uniform(0.12, 0.18)
    fissure = (np.abs(head.p) < max(0.6, size / 160)) & (np.abs(head.q) > 0.35 * head.half_height)
    ventricles = _ventricles(rng, head, size)
    brain &= ~(fissure | ventricles)
    white &= brain

    image = np.zeros((size, size), np.float32)
    image[head.r < 1.0] = _SCALP
    image[head.r < skull_outer] = _SKULL
    image[intracranial] = _CSF
    image[brain] = _GREY
    image[white] = _WHITE
    texture = _smooth_noise(rng, size, max(0.7, size / 100))
    image *= 1.0 + 0.04 * texture

    labels = np.zeros((size, size), np.uint8)
    labels[intracranial] = CSF
    labels[brain] = BRAIN
    return image, labels


def _lesion_shape(rng: np.random.Generator, head: _Head, candidates: np.ndarray,
                  blob_noise: np.ndarray, size: int) -> np.ndarray | None:
    """One irregular blob (a noise-perturbed ellipse) inside ``candidates``, or None."""
    ys, xs = np.nonzero(candidates)
    if len(ys) == 0:
        return None
    min_area = max(6, int(0.0012 * size * size))
    for _ in range(10):
        pick = rng.integers(len(ys))
        centre = (float(head.p[ys[pick], xs[pick]]), float(head.q[ys[pick], xs[pick]]))
        axes = (size * rng.uniform(0.025, 0.075), size * rng.uniform(0.025, 0.075))
        distance = _ellipse_distance(head.p, head.q, centre, axes, rng.uniform(0, np.pi))
        blob = _largest_component(((distance + 0.45 * blob_noise) < 1.0) & candidates)
        if blob.sum() >= min_area:
            return blob
    return None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (noise can split a blob)."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                                   connectivity=8)
    if count <= 2:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return components == largest


def _add_lesions(rng: np.random.Generator, head: _Head, image: np.ndarray, labels: np.ndarray,
                 count: int, size: int) -> int:
    """Paint up to ``count`` lesions into ``image`` and ``labels``; return how many fit."""
    deep_tissue = (labels == BRAIN) & (head.r < 0.7)
    blob_noise = _smooth_noise(rng, size, max(1.0, size / 45))
    grain = _smooth_noise(rng, size, max(0.7, size / 90))
    edge_sigma = max(0.5, size / 200)
    painted = 0
    for _ in range(count):
        blob = _lesion_shape(rng, head, deep_tissue & (labels != LESION), blob_noise, size)
        if blob is None:
            continue
        contrast = rng.uniform(0.30, 0.55) * (1 if rng.random() < 0.5 else -1)
        # A soft edge (partial volume) keeps the boundary from being a one-pixel step.
        alpha = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), edge_sigma)
        image *= 1.0 + contrast * alpha * (1.0 + 0.2 * grain)
        labels[blob] = LESION
        painted += 1
    return painted


def _bias_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth multiplicative field, a random quadratic in the exponent, float32."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    c = rng.normal(0.0, 0.12, size=5)
    return np.exp(c[0] * x + c[1] * y + c[2] * x * y + c[3] * x * x + c[4] * y * y)


def make_phantom(index: int, size: int = 128, seed: int = 0,
                 lesion_probability: float = 0.8) -> Phantom:
    """Draw phantom ``index`` of the series ``seed`` (deterministic, in memory)."""
    _check_parameters(1, size, seed, lesion_probability)
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise MedistillError(f"the phantom index must be a non-negative integer, got {index!r}")
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    head = _draw_head(rng, size)
    image, labels = _tissue(rng, head, size)
    wanted = int(rng.integers(1, MAX_LESIONS + 1)) if rng.random() < lesion_probability else 0
    lesions = _add_lesions(rng, head, image, labels, wanted, size)

    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8))  # scanner point spread
    image *= _bias_field(rng, size) * rng.uniform(0.85, 1.15)
    sigma = rng.uniform(0.015, 0.05)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real**2 + imaginary**2)  # Rician: magnitude of complex noise
    image8 = np.clip(np.rint(magnitude * _TO_8BIT), 0, 255).astype(np.uint8)
    return Phantom(image=image8, labels=labels, lesions=lesions)


# ---------------------------------------------------------------------------
# The data-set folder
# ---------------------------------------------------------------------------


def _check_parameters(n: int, size: int, seed: int, lesion_probability: float) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise MedistillError(f"the number of phantoms must be a positive integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise MedistillError(f"phantom size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedistillError(f"the seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(lesion_probability) <= 1.0:
        raise MedistillError(f"lesion_probability must lie in [0, 1], got {lesion_probability!r}")


def phantom_stem(index: int) -> str:
    """File stem of phantom ``index``: ``phantom_0007``."""
    return f"phantom_{index:04d}"


def generate_phantoms(out_dir: str | Path, n: int, size: int = 128, seed: int = 0,
                      lesion_probability: float = 0.8, multiclass: bool = False,
                      overwrite: bool = False) -> list[Path]:
    """Write ``n`` phantoms to ``out_dir/images`` and ``out_dir/masks``; return image paths.

    Masks are binary lesion masks saved as {0, 255} 8-bit PNG by default; with
    ``multiclass=True`` they are label maps {0 background, 1 brain tissue, 2 CSF,
    3 lesion} saved as-is (small values). A non-empty ``out_dir`` is refused unless
    ``overwrite`` (see :func:`prepare_output_folder`).
    """
    _check_parameters(n, size, seed, lesion_probability)
    image_dir, mask_dir = prepare_output_folder(out_dir, overwrite)
    records, paths = [], []
    for index in range(int(n)):
        phantom = make_phantom(index, size, seed, lesion_probability)
        stem = phantom_stem(index)
        if multiclass:
            mask = phantom.labels
        else:
            mask = np.where(phantom.lesion_mask, 255, 0).astype(np.uint8)
        write_png(image_dir / f"{stem}.png", phantom.image)
        write_png(mask_dir / f"{stem}.png", mask)
        paths.append(image_dir / f"{stem}.png")
        records.append({"stem": stem, "lesions": phantom.lesions,
                        "lesion_pixels": int(phantom.lesion_mask.sum())})
    parameters = {"generator": "medistill.data.phantoms", "version": GENERATOR_VERSION,
                  "n": int(n), "size": int(size), "seed": int(seed),
                  "lesion_probability": float(lesion_probability), "multiclass": bool(multiclass)}
    out_dir = Path(out_dir)
    class_names = list(CLASS_NAMES) if multiclass else ["background", "lesion"]
    summary = {**parameters, "class_names": class_names, "images": records}
    write_json_atomic(out_dir / "phantoms.json", summary)
    write_text_atomic(out_dir / "README.md", _readme(parameters, records))
    return paths


def _readme(parameters: dict, records: list[dict]) -> str:
    n, size, seed = parameters["n"], parameters["size"], parameters["seed"]
    negatives = sum(1 for r in records if r["lesions"] == 0)
    if parameters["multiclass"]:
        masks = ("label maps saved as small-valued 8-bit PNG: 0 background (air, scalp and "
                 "skull), 1 brain tissue (grey and white matter), "
                 "2 CSF (ventricles, midline fissure and the rim under the skull), 3 lesion")
    else:
        masks = "binary lesion masks, 8-bit PNG with values 0 (background) and 255 (lesion)"
    return f"""# Synthetic MRI-like head phantoms

Generated by `medistill.data.phantoms.generate_phantoms` (generator version
{parameters['version']}); regenerate with
`medistill phantoms --out DIR --n {n} --size {size} --seed {seed}`
(lesion probability {parameters['lesion_probability']}, multiclass {parameters['multiclass']}).

- `images/phantom_NNNN.png`: {n} axial T1-like slices, {size} x {size}, 8-bit grey.
- `masks/phantom_NNNN.png`: {masks}.
- `phantoms.json`: the parameters and, per image, the number of lesions and lesion pixels.

{n - negatives} images contain lesions, {negatives} have an empty mask (negatives).

## How a phantom is drawn
Phantom `i` uses a random generator seeded with `(seed, i, version)`, so it does not
depend on how many phantoms are written.

1. Head: a rotated ellipse with a wobbly outline; scalp (bright), skull ring (dark),
   CSF (dark), grey matter and white matter whose boundary is folded by smoothed
   noise, a midline fissure and two tilted ventricles filled with CSF.
2. Tissue texture: 4 % multiplicative smoothed noise.
3. Lesions: with probability {parameters['lesion_probability']} the slice gets 1 to
   {MAX_LESIONS} blobs (noise-perturbed ellipses, 3 to 15 % of the image side) inside
   deep brain tissue, each 30 to 55 % brighter or darker than the tissue under it,
   with a soft edge and some internal grain.
4. Scanner: Gaussian blur (point spread), a smooth multiplicative bias field
   (exponential of a random quadratic), a global gain, and Rician noise (standard
   deviation 1.5 to 5 % of the intensity scale).
"""
