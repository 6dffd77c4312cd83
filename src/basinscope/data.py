"""Transitional: the datasets now live in :mod:`basinscope.training` (``_data``, ``_downloads``,
``_formats``, ``_bundle``)."""

from .training._bundle import DataBundle as DataBundle
from .training._data import DATASETS as DATASETS
from .training._data import _mnist1d_arrays as _mnist1d_arrays
from .training._data import dataset_names as dataset_names
from .training._data import load_dataset as load_dataset
from .training._data import poison_labels as poison_labels
from .training._data import train_subset_indices as train_subset_indices
from .training._downloads import CHECKSUMS as CHECKSUMS
from .training._downloads import MIRRORS as MIRRORS
from .training._downloads import cache_dir as cache_dir
from .training._formats import read_idx as read_idx
