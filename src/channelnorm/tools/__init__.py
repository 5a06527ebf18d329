"""Model-level tools: ``convert`` (replace, synchronize, freeze, fold norms; ``fold`` holds the folding), ``precise``
(``recompute_stats``) and ``momentum`` (converters to and from Keras' ``decay``)."""
from . import convert, momentum, precise

__all__ = ["convert", "momentum", "precise"]
