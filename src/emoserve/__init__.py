"""emoserve: speech emotion recognition with the emotion2vec models, as a library and a service."""

from .emotion_model import EmotionModel, ModelInfo
from .errors import AudioError, CheckpointError, EmoserveError, InvalidParameterError, ModelNotFoundError
from .labels import LABELS
from .results import EmotionResult

__version__ = "0.1.0"

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
