"""Datasets as tensors: CIFAR-10 and IMDB, decoded once and cached.

The data is read from local parquet files in the hub's layout: ``cifar10/{train,test}.parquet`` (``img``: PNG
struct, ``label``) and ``imdb/{train,test}.parquet`` (``text``, ``label``), in the directory ``locate`` finds
(``--data-dir``, $SPARSEBENCH_DATA_DIR, or ``shared/data`` beside the repository). Only when no such directory
holds a dataset and $SPARSEBENCH_USE_HUB is ``1`` is it downloaded from the Hugging Face hub instead; CI and the
tests never set that variable, so they never download.

The first call decodes (CIFAR-10, ``cifar10``) or tokenises (IMDB, ``imdb``) the whole dataset and saves the tensors
under the cache directory (``cache``); later calls only load them. Normalisation and augmentation belong to the
training code, so images stay uint8. ``train_size``/``test_size`` take the first N rows (the files are pre-shuffled,
so a prefix is roughly balanced), except the IMDB test subset, which is exactly balanced.
"""

from .cifar10 import ImageData, load_cifar10
from .imdb import TextData, load_imdb
from .locate import DATA_ENV, HUB_ENV, DataNotFound, resolve_data_dir

__all__ = ["DATA_ENV", "HUB_ENV", "DataNotFound", "ImageData", "TextData", "load_cifar10", "load_imdb",
           "resolve_data_dir"]
