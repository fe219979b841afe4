"""emoserve: speech emotion recognition with the emotion2vec models, as a library and a service.

The model classes load lazily, so `emoserve --help`, the HTTP client and the error types do not
pay for importing torch, and work with the base install alone (`pip install emoserve`, no torch);
the model needs the `server` extra.
"""

from importlib import import_module

from .errors import AudioError, CheckpointError, EmoserveError, InvalidParameterError, ModelNotFoundError
from .labels import LABELS

__version__ = "0.1.0"

LAZY = {"EmotionModel": "inference.emotion_model", "ModelInfo": "inference.results",
        "EmotionResult": "inference.results"}

__all__ = [
    "LABELS",
    "AudioError",
    "CheckpointError",
    "EmoserveError",
    "EmotionModel",
    "EmotionResult",
    "InvalidParameterError",
    "ModelInfo",
    "ModelNotFoundError",
    "__version__",
]


def __getattr__(name: str):
    if name in LAZY:
        try:
            module = import_module(f".{LAZY[name]}", __name__)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"emoserve.{name} needs the server install ({e.name} is missing): "
                                      "pip install 'emoserve[server]'", name=e.name) from e
        return getattr(module, name)
    raise AttributeError(f"module 'emoserve' has no attribute {name!r}")
