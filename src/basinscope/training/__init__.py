"""training/: train the classic experiments' models, seeded, resumable, checkpointed.

The config (:class:`TrainConfig`), the factories it names (optimizer, schedules,
SAM/ASAM, SWA, model), the step loop (:func:`train`), the run directory that
owns every file of a run (resume state, finished-run reuse, checkpoints,
trajectories), and the data and models the studies train on: image and
feature classifiers (MLP, SmallCNN) and a causal :class:`Transformer` on token
data (modular arithmetic, a Markov language, a user's nanoGPT token files). It imports no
measure of the loss landscape.
"""

from ._bundle import IGNORE_INDEX as IGNORE_INDEX
from ._bundle import DataBundle as DataBundle
from ._checkpoint import CONFIG_FILE as CONFIG_FILE
from ._checkpoint import METRICS_FILE as METRICS_FILE
from ._checkpoint import MODEL_FILE as MODEL_FILE
from ._checkpoint import STATE_FILE as STATE_FILE
from ._checkpoint import TRAJECTORY_FILE as TRAJECTORY_FILE
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import load_trajectory as load_trajectory
from ._checkpoint import load_weights as load_weights
from ._config import OPTIMIZERS as OPTIMIZERS
from ._config import SCHEDULES as SCHEDULES
from ._config import TrainConfig as TrainConfig
from ._data import DATASETS as DATASETS
from ._data import dataset_names as dataset_names
from ._data import load_dataset as load_dataset
from ._data import poison_labels as poison_labels
from ._data import train_subset_indices as train_subset_indices
from ._downloads import CHECKSUMS as CHECKSUMS
from ._downloads import MIRRORS as MIRRORS
from ._downloads import cache_dir as cache_dir
from ._factories import data_model_options as data_model_options
from ._factories import load_config_data as load_config_data
from ._factories import lr_factor as lr_factor
from ._factories import make_model as make_model
from ._factories import make_optimizer as make_optimizer
from ._factories import make_sam as make_sam
from ._factories import make_scheduler as make_scheduler
from ._factories import make_swa_scheduler as make_swa_scheduler
from ._formats import read_idx as read_idx
from ._guards import data_fingerprint as data_fingerprint
from ._loop import train as train
from ._models import ACTIVATIONS as ACTIVATIONS
from ._models import MLP as MLP
from ._models import MODELS as MODELS
from ._models import SmallCNN as SmallCNN
from ._models import build_model as build_model
from ._rundir import RunDir as RunDir
from ._rundir import TrainResult as TrainResult
from ._rundir import check_accepts as check_accepts
from ._sam import ASAM_ETA as ASAM_ETA
from ._sam import ASAM_RHO as ASAM_RHO
from ._sam import SAM as SAM
from ._sam import SAM_RHO as SAM_RHO
from ._sam import frozen_running_stats as frozen_running_stats
from ._sequences import MarkovChain as MarkovChain
from ._sequences import markov_chain as markov_chain
from ._sequences import markov_language as markov_language
from ._sequences import modular_arithmetic as modular_arithmetic
from ._sequences import token_files as token_files
from ._trajectory import Trajectory as Trajectory
from ._transformer import Transformer as Transformer
