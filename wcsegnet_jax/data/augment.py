"""The paper's on-the-fly augmentation as one composed affine warp per example.

The paper lists Keras' ImageDataGenerator settings (rotation 40, width/height shift 0.2, shear
0.2, zoom 0.2, horizontal flip). We follow Keras' semantics with explicit units:
  * rotation: degrees, uniform in [-r, r];
  * shifts: fractions of the width/height, uniform in [-s, s];
  * shear: degrees (Keras' `shear_range` is in degrees, so the paper's 0.2 is a tiny shear);
  * zoom: scale factors uniform in [1-z, 1+z] (or `zoom_range`'s [lower, upper]), drawn
    independently for x and y as Keras does;
  * flip: left-right with probability 1/2;
  * border: 'nearest' replicates the edge pixels (Keras' default fill_mode).
Keras applies rotation @ shift @ shear @ zoom about the image centre, mapping output pixels to
input pixels, then flips. We compose all five into one 3x3 matrix and warp once: the image
bilinearly, the label map with nearest sampling (no new labels), both with the same matrix.
"""

import dataclasses

import cv2
import ml_collections
import numpy as np

FILL_MODES = {
  'nearest': cv2.BORDER_REPLICATE,
  'reflect': cv2.BORDER_REFLECT_101,
  'constant': cv2.BORDER_CONSTANT,
}


@dataclasses.dataclass(frozen=True)
class AffineParams:
  """One draw of the augmentation, in explicit units."""

  rotation_deg: float = 0.0
  shift_x_px: float = 0.0
  shift_y_px: float = 0.0
  shear_deg: float = 0.0
  zoom_x: float = 1.0
  zoom_y: float = 1.0
  flip: bool = False


def sample_params(
  rng: np.random.Generator, aug: ml_collections.ConfigDict, height: int, width: int
) -> AffineParams:
  """Draws one set of parameters from the configured ranges."""
  low, high = tuple(aug.zoom_range) or (1 - aug.zoom, 1 + aug.zoom)
  zoom_x = rng.uniform(low, high)
  zoom_y = rng.uniform(low, high) if aug.zoom_independent_xy else zoom_x
  return AffineParams(
    rotation_deg=rng.uniform(-aug.rotation_deg, aug.rotation_deg),
    shift_x_px=rng.uniform(-aug.width_shift, aug.width_shift) * width,
    shift_y_px=rng.uniform(-aug.height_shift, aug.height_shift) * height,
    shear_deg=rng.uniform(-aug.shear_deg, aug.shear_deg),
    zoom_x=zoom_x,
    zoom_y=zoom_y,
    flip=bool(aug.horizontal_flip and rng.random() < 0.5),
  )


def inverse_affine_matrix(p: AffineParams, height: int, width: int) -> np.ndarray:
  """3x3 matrix taking output pixel (x, y, 1) to the input pixel it samples."""
  theta, shear = np.deg2rad(p.rotation_deg), np.deg2rad(p.shear_deg)
  rotation = np.array(
    [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
  )
  shift = np.array([[1, 0, p.shift_x_px], [0, 1, p.shift_y_px], [0, 0, 1]])
  shear_m = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
  zoom = np.diag([p.zoom_x, p.zoom_y, 1.0])
  # Pixel centres run 0..W-1: about (W-1)/2 a 90-degree turn or a flip maps pixels onto pixels.
  cx, cy = (width - 1) / 2, (height - 1) / 2
  to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
  from_centre = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
  flip = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]]) if p.flip else np.eye(3)
  return from_centre @ rotation @ shift @ shear_m @ zoom @ to_centre @ flip


def warp_pair(
  image: np.ndarray, label_map: np.ndarray, matrix: np.ndarray, fill_mode: str
) -> tuple[np.ndarray, np.ndarray]:
  """Warps image (bilinear) and label map (nearest) with the same output->input matrix."""
  h, w = label_map.shape
  border = FILL_MODES[fill_mode]
  flags = cv2.WARP_INVERSE_MAP
  warped_image = cv2.warpAffine(
    image, matrix[:2], (w, h), flags=flags | cv2.INTER_LINEAR, borderMode=border
  )
  warped_labels = cv2.warpAffine(
    label_map, matrix[:2], (w, h), flags=flags | cv2.INTER_NEAREST, borderMode=border
  )
  return warped_image, warped_labels


def color_jitter(
  image: np.ndarray, rng: np.random.Generator, aug: ml_collections.ConfigDict
) -> np.ndarray:
  """Random brightness, contrast and saturation factors in [1-a, 1+a] and a hue rotation in
  [-h, h] degrees (not in the paper: stains and cameras differ between labs). uint8 in and out.
  """
  if not (aug.brightness or aug.contrast or aug.saturation or aug.hue_deg):
    return image
  x = image.astype(np.float32)
  x = x * rng.uniform(1 - aug.brightness, 1 + aug.brightness)
  mean = x.mean()
  x = (x - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
  gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = (x - gray[..., None]) * rng.uniform(1 - aug.saturation, 1 + aug.saturation) + gray[..., None]
  if aug.hue_deg:
    # A rotation about the gray axis of RGB space: the hue turns, luminance (nearly) stays.
    theta = np.deg2rad(rng.uniform(-aug.hue_deg, aug.hue_deg))
    axis = np.full(3, 1 / np.sqrt(3), np.float32)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    x = x @ rotation.T.astype(np.float32)
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def optics_jitter(
  image: np.ndarray, rng: np.random.Generator, aug: ml_collections.ConfigDict
) -> np.ndarray:
  """Another microscope and camera (not in the paper; 0 = off): a gamma exp(U(-g, g)), a
  Gaussian blur of sigma U(0, blur_sigma) pixels (defocus), sensor noise of std
  U(0, noise_std) levels and JPEG compression at a quality U(jpeg_quality, 95), all of them on a
  share `optics_prob` of the images (the others keep their own camera's look). uint8 in/out."""
  x = image
  if not (aug.gamma or aug.blur_sigma or aug.noise_std or aug.jpeg_quality):
    return x
  prob = aug.get('optics_prob', 1.0)
  if prob < 1.0 and rng.uniform() >= prob:  # no draw at 1: runs before the knob replay alike
    return x
  if aug.gamma:
    table = 255.0 * (np.arange(256) / 255.0) ** np.exp(rng.uniform(-aug.gamma, aug.gamma))
    x = np.clip(table + 0.5, 0, 255).astype(np.uint8)[x]
  if aug.blur_sigma:
    sigma = rng.uniform(0, aug.blur_sigma)
    x = cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0.1 else x
  if aug.noise_std:
    noise = rng.normal(0, rng.uniform(0, aug.noise_std), x.shape)
    x = np.clip(x + noise + 0.5, 0, 255).astype(np.uint8)
  if aug.jpeg_quality:
    quality = int(rng.integers(aug.jpeg_quality, 96))
    ok, encoded = cv2.imencode('.jpg', x, [cv2.IMWRITE_JPEG_QUALITY, quality])
    x = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else x
  return x


def augment_example(
  example: dict, rng: np.random.Generator, aug: ml_collections.ConfigDict
) -> dict:
  """One random augmentation of an example's image and label map; other fields pass through."""
  h, w = example['label_map'].shape
  params = sample_params(rng, aug, h, w)
  image, label_map = warp_pair(
    example['image'], example['label_map'], inverse_affine_matrix(params, h, w), aug.fill_mode
  )
  image = optics_jitter(color_jitter(image, rng, aug), rng, aug)
  return {**example, 'image': image, 'label_map': label_map}
