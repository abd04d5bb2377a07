"""Training of one submodel: a cosine classifier over the classes of one part."""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from .arcface import ArcFaceLoss, build_submodel
from .config import Config

logger = logging.getLogger(__name__)


class ProgressBar(keras.callbacks.Callback):
    """One tqdm line per submodel over all its epochs, with speed, loss and time left."""

    def __init__(self, description: str, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.description = description
        self.total = epochs * steps_per_epoch
        self.bar = None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total, desc=self.description, unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 10 == 0:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{float(logs['loss']):.3f}")

    def on_train_end(self, logs=None):
        self.bar.close()


def part_training_set(x: np.ndarray, y: np.ndarray, part: np.ndarray, n_classes: int):
    """Return the samples of the classes in ``part`` with labels renumbered 0..len(part)-1."""
    local_label = np.full(n_classes, -1, dtype=np.int32)
    local_label[part] = np.arange(len(part), dtype=np.int32)
    mask = local_label[y] >= 0
    return x[mask], local_label[y[mask]]


def train_submodel(data, part: np.ndarray, config: Config, path: Path, index: int = 0, n_parts: int = 1) -> dict:
    """Train the submodel of one part and save it to ``path``; returns its training record.

    Class weights start at the normalized class centers, then the ArcFace loss (margin and scale
    from the config) is minimized with SGD and momentum 0.9 for ``config.epochs`` epochs.
    """
    x, y = part_training_set(data.x_train, data.y_train, part, data.n_classes)
    keras.utils.set_random_seed(config.seed + index)

    model = build_submodel(data.dim, len(part), initial_weights=data.class_centers[part], name=f"submodel_{index:03d}")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9),
        loss=ArcFaceLoss(margin=config.arcface_margin, scale=config.arcface_scale),
    )
    batch_size = min(config.batch_size, len(x))
    steps = int(np.ceil(len(x) / batch_size))
    progress = ProgressBar(f"submodel {index + 1}/{n_parts} ({len(part)} classes)", config.epochs, steps)

    started = time.perf_counter()
    history = model.fit(x, y, batch_size=batch_size, epochs=config.epochs, shuffle=True, verbose=0,
                        callbacks=[progress])
    seconds = time.perf_counter() - started

    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras requires the .keras suffix, so the temporary file keeps it.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)

    record = {
        "part": index,
        "n_classes": int(len(part)),
        "n_samples": int(len(x)),
        "epochs": config.epochs,
        "train_seconds": seconds,
        "final_loss": float(history.history["loss"][-1]),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info("submodel %d/%d: %d classes, %d samples, loss %.3f, %.1f s",
                index + 1, n_parts, len(part), len(x), record["final_loss"], seconds)

    del model
    keras.backend.clear_session()
    gc.collect()
    return record
