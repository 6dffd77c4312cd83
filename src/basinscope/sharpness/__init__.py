"""Sharpness of a minimum: how much the loss rises when the weights move.

Measures, each a pure function of an :class:`~basinscope.Objective` returning a
frozen result (``to_dict()`` gives its JSON-ready scalars):

* **ε-sharpness in a slice** (``_slice``: :func:`from_surface`, :func:`epsilon`) —
  the seed tool's ``max_{‖c‖≤ε} L(θ0 + Σ c_j d_j) − L(θ0)`` over the coefficients
  ``c`` of the surface directions.
* **Spread over direction seeds** (``_spread``: :func:`direction_spread`) — one slice
  per direction seed, its ε-sharpness and curvature ``d²/dt² L(θ0 + t d)|_{t=0}``
  along each direction, and their mean and SD over the seeds.
* **Average-case sharpness** (``_noise``: :func:`average_case`) — the expected loss
  increase under Gaussian weight noise, ``E_z[L(θ0 + σ z)] − L(θ0)``, with its
  standard error; adaptive noise ``σ·|θ0| ⊙ z`` (Kwon et al. 2021).
* **Worst-case sharpness** (``_worst``: :func:`worst_case`) —
  ``max_{‖δ‖≤ρ} L(θ0 + δ) − L(θ0)`` in the L2 or L∞ ball, optionally adaptive and
  per batch of ``m`` examples, by projected gradient ascent.
* **Keskar ε-sharpness** (``_keskar``: :func:`keskar`) — Keskar et al. (2017)'s φ
  over a box, by L-BFGS-B.
* **PAC-Bayes flatness** (``_noise``: :func:`pac_bayes`) — the largest Gaussian
  weight-noise scale σ that raises the training error by at most a target, and the
  PAC-Bayes bound term built on it (Jiang et al. 2019).
* **The suite** (``_suite``: :func:`suite`, :class:`SuiteConfig`,
  :func:`suite_values`) — all of them (and λ_max, ``tr H``, a filter-normalised
  line) under one key vocabulary, :data:`SUITE_MEASURES`.
"""

from ._keskar import KeskarSharpness as KeskarSharpness
from ._keskar import keskar as keskar
from ._noise import NoiseSharpness as NoiseSharpness
from ._noise import PacBayes as PacBayes
from ._noise import average_case as average_case
from ._noise import noise_error_increase as noise_error_increase
from ._noise import pac_bayes as pac_bayes
from ._slice import COARSE_POINTS as COARSE_POINTS
from ._slice import EpsilonSharpness as EpsilonSharpness
from ._slice import epsilon as epsilon
from ._slice import from_surface as from_surface
from ._spread import DirectionSpread as DirectionSpread
from ._spread import direction_spread as direction_spread
from ._suite import SUITE_MEASURES as SUITE_MEASURES
from ._suite import SuiteConfig as SuiteConfig
from ._suite import suite as suite
from ._suite import suite_values as suite_values
from ._worst import NORMS as NORMS
from ._worst import WorstCase as WorstCase
from ._worst import worst_case as worst_case

__all__ = [
    "COARSE_POINTS",
    "NORMS",
    "SUITE_MEASURES",
    "DirectionSpread",
    "EpsilonSharpness",
    "KeskarSharpness",
    "NoiseSharpness",
    "PacBayes",
    "SuiteConfig",
    "WorstCase",
    "average_case",
    "direction_spread",
    "epsilon",
    "from_surface",
    "keskar",
    "noise_error_increase",
    "pac_bayes",
    "suite",
    "suite_values",
    "worst_case",
]
