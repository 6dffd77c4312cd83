"""Transitional: the models now live in :mod:`basinscope.training` (``training/_models.py``)."""

from .training._models import ACTIVATIONS as ACTIVATIONS
from .training._models import MLP as MLP
from .training._models import MODELS as MODELS
from .training._models import SmallCNN as SmallCNN
from .training._models import _check_options as _check_options
from .training._models import build_model as build_model
