"""steer: fast STEER decoding (contrastive expert guidance + negative prompting, arXiv 2308.07645)."""

from steer.config import SteerConfig, steer_weights
from steer.engine.engine import Result, SteerEngine
from steer.engine.sequence import Request
from steer.hf.processor import SteerLogitsProcessor
from steer.ops import backends, combine, sample

__version__ = "0.1.0"

__all__ = [
    "Request",
    "Result",
    "SteerConfig",
    "SteerEngine",
    "SteerLogitsProcessor",
    "backends",
    "combine",
    "sample",
    "steer_weights",
    "__version__",
]
