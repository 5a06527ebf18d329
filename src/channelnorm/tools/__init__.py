"""Model-level tools: ``convert`` (replace, synchronize, freeze, fold norms; ``fold`` holds the folding; ``keras``
loads and exports Keras ``BatchNormalization`` weights), ``precise`` (``recompute_stats``), ``momentum`` (converters
to and from Keras' ``decay``) and ``diagnose`` (what each norm layer does on the user's batches; its passes in
``diagnose_passes``, its report in ``diagnosis``)."""
from . import convert, diagnose, diagnosis, momentum, precise

__all__ = ["convert", "diagnose", "diagnosis", "momentum", "precise"]
