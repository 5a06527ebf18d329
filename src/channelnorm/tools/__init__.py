"""Model-level tools: ``convert`` (replace, synchronize, freeze, fold norms; ``fold`` holds the folding; ``keras``
loads and exports Keras ``BatchNormalization`` weights), ``precise`` (``recompute_stats``) and ``momentum``
(converters to and from Keras' ``decay``)."""
from . import convert, momentum, precise

__all__ = ["convert", "momentum", "precise"]
