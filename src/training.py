"""Training of one submodel: a cosine classifier over the classes of one part."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import psutil
from tqdm.auto import tqdm

from .arcface import ArcFaceLoss, build_submodel
from .config import Config

logger = logging.getLogger(__name__)

# With jit_compile "auto", XLA compiles a submodel's training step when its kernel (dim x classes)
# has at least this many weights. Measured on 2 CPU cores with TensorFlow 2.21, dim 512, batch 512:
# XLA was slower at 1,000 and 2,500 classes, as fast at 5,000 and twice as fast at 10,000 (61 -> 128
# GFLOP/s). Compiling costs about 1 s per submodel and batch shape.
XLA_MIN_KERNEL_WEIGHTS = 512 * 8000


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    NOTE: at 1,000 identities and K = 25 the trim changed the resident-memory growth over the 25
    submodels only from 73 to 69 MiB; most of that growth is not freed heap (docs/benchmarks.md).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def training_flop(dim: int, n_classes: int, n_samples: int, epochs: int) -> float:
    """Return the operations of training's matrix products: 3 products of 2 * dim * n_classes per sample."""
    return float(3 * 2 * dim * n_classes) * n_samples * epochs


def use_xla(setting, dim: int, n_classes: int) -> bool:
    """Resolve the ``jit_compile`` config value (true, false or "auto") for one submodel."""
    if setting == "auto":
        return dim * n_classes >= XLA_MIN_KERNEL_WEIGHTS
    return bool(setting)


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


def train_submodel(data, part: np.ndarray, config: Config, path: Path, index: int = 0, n_parts: int = 1) -> dict:
    """Train the submodel of one part and save it to ``path``; returns its training record.

    Class weights start at the normalized class centers, then the ArcFace loss (margin and scale
    from the config) is minimized with SGD and momentum 0.9 for ``config.epochs`` epochs. Only the
    part's training rows are held in memory while it trains (see ``PreparedData.training_rows``).
    """
    x, y = data.training_rows(part)
    flop = training_flop(data.dim, len(part), len(x), config.epochs)
    jit = use_xla(config.jit_compile, data.dim, len(part))
    keras.utils.set_random_seed(config.seed + index)

    model = build_submodel(data.dim, len(part), initial_weights=data.class_centers[part], name=f"submodel_{index:03d}")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9),
        loss=ArcFaceLoss(margin=config.arcface_margin, scale=config.arcface_scale),
        jit_compile=jit,
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
        "jit_compile": jit,
        "train_gflops": flop / max(seconds, 1e-9) / 1e9,
    }
    del model, history, x, y
    keras.backend.clear_session()
    release_freed_memory()
    # Resident memory after the cleanup, to show any growth from one submodel to the next.
    record["rss_mib_after"] = psutil.Process().memory_info().rss / 2**20
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info("submodel %d/%d: %d classes, %d samples, loss %.3f, %.1f s, %.1f GFLOP/s%s, RSS %.0f MiB",
                index + 1, n_parts, len(part), record["n_samples"], record["final_loss"], seconds,
                record["train_gflops"], " (XLA)" if jit else "", record["rss_mib_after"])
    return record
