"""The evaluation core: a model's loss as a function of a flat parameter vector.

``ParamSpace`` says which parameters are the coordinates; a ``Loss`` is a sum over
counted units (``CrossEntropy``, ``MSE``, ``MeanLoss`` around any batch-mean loss,
``SumLoss`` around a user's ``(sum, count)`` function); ``Objective`` holds the
private model copy and the data and evaluates ``L(θ)`` exactly; ``Batches`` is
what every engine reads (model, space, loss, data chunks, float64 reduction);
engines (``PlainEngine``, ``FirstLayerEngine``, ``ChainEngine``, ``VmapEngine``
(any model, points batched by ``torch.func.vmap``), ``BatchNormEngine``) evaluate
lines, planes and rays; ``make_plan`` and ``Objective.plan`` say which engine runs
and why faster ones were refused (``make_plan(batches, engine=...)`` names one).
"""

from ._autograd import refuse_if_asymmetric as refuse_if_asymmetric
from ._backends import double_backward_failure as double_backward_failure
from ._backends import twice_differentiable as twice_differentiable
from ._batchnorm import BatchNormEngine as BatchNormEngine
from ._batchnorm import batchnorm_layers as batchnorm_layers
from ._chain import ChainEngine as ChainEngine
from ._engine import Batches as Batches
from ._engine import Engine as Engine
from ._engine import PlainEngine as PlainEngine
from ._engine import combine as combine
from ._engine import evaluate_points as evaluate_points
from ._first_layer import FirstLayerEngine as FirstLayerEngine
from ._losses import MSE as MSE
from ._losses import CrossEntropy as CrossEntropy
from ._losses import Loss as Loss
from ._losses import MeanLoss as MeanLoss
from ._losses import SumLoss as SumLoss
from ._losses import classification_loss as classification_loss
from ._objective import LossFn as LossFn
from ._objective import Objective as Objective
from ._parallel import shard_of as shard_of
from ._plan import Plan as Plan
from ._plan import make_plan as make_plan
from ._space import Include as Include
from ._space import ParamSpace as ParamSpace
from ._space import match as match
from ._vmap import VmapEngine as VmapEngine

__all__ = [
    "MSE",
    "BatchNormEngine",
    "Batches",
    "ChainEngine",
    "CrossEntropy",
    "Engine",
    "FirstLayerEngine",
    "Include",
    "Loss",
    "LossFn",
    "MeanLoss",
    "SumLoss",
    "Objective",
    "ParamSpace",
    "PlainEngine",
    "Plan",
    "VmapEngine",
    "batchnorm_layers",
    "classification_loss",
    "combine",
    "double_backward_failure",
    "evaluate_points",
    "make_plan",
    "match",
    "refuse_if_asymmetric",
    "twice_differentiable",
]
