"""MixMaxSim: large-scale face identification by dividing identities over submodels."""

import logging
import os

# TensorFlow's C++ start-up messages drown the project's own log; TF_CPP_MIN_LOG_LEVEL set by the
# user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# retina-face switches the whole process to legacy Keras unless this is set before it is imported.
os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "onnx")

logging.getLogger(__name__).addHandler(logging.NullHandler())
