"""Random image augmentations that fill up small identities' train splits.

Every augmented image applies each configured augmentation once, in this order:

- ``flip``: horizontal mirror with probability 0.5 (always, when it is the only augmentation).
- ``rotate``: rotation about the image center by an angle drawn uniformly from [-10, 10]
  degrees. The border is filled by reflection, so no black corners appear.
- ``crop``: a window of 85-100% of the width and height (one fraction for both, drawn uniformly)
  at a random position, resized back to the original size.
- ``brightness``: pixel values multiplied by a factor drawn uniformly from [0.7, 1.3], clipped
  to 0-255.
"""

from __future__ import annotations

import cv2
import numpy as np

from src.config import AUGMENTATIONS

FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEGREES = 10.0
MIN_CROP_FRACTION = 0.85
BRIGHTNESS_RANGE = (0.7, 1.3)


def augment_image(image: np.ndarray, augmentations: list[str], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Return an augmented copy of a uint8 image and the parameters that were drawn.

    Unknown names raise ValueError; config validation rejects them earlier.
    """
    unknown = [name for name in augmentations if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; expected names from {list(AUGMENTATIONS)}")
    result = image
    params: dict = {}
    height, width = image.shape[:2]

    if "flip" in augmentations:
        flip = len(augmentations) == 1 or rng.random() < FLIP_PROBABILITY
        params["flip"] = bool(flip)
        if flip:
            result = cv2.flip(result, 1)

    if "rotate" in augmentations:
        angle = float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
        result = cv2.warpAffine(result, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        params["rotate_degrees"] = round(angle, 3)

    if "crop" in augmentations:
        fraction = float(rng.uniform(MIN_CROP_FRACTION, 1.0))
        crop_w = max(1, int(round(width * fraction)))
        crop_h = max(1, int(round(height * fraction)))
        x0 = int(rng.integers(0, width - crop_w + 1))
        y0 = int(rng.integers(0, height - crop_h + 1))
        window = result[y0 : y0 + crop_h, x0 : x0 + crop_w]
        result = cv2.resize(window, (width, height), interpolation=cv2.INTER_LINEAR)
        params["crop_fraction"] = round(fraction, 4)
        params["crop_offset"] = [x0, y0]

    if "brightness" in augmentations:
        factor = float(rng.uniform(*BRIGHTNESS_RANGE))
        result = np.clip(result.astype(np.float32) * factor, 0, 255).astype(np.uint8)
        params["brightness"] = round(factor, 4)

    return np.ascontiguousarray(result), params
