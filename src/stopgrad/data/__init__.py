"""Data sets as uint8 tensors, and batched augmentation that runs wherever the batch is."""
from .augment import RECIPES, AugmentRecipe, ViewParams, apply_params, augment, prepare, sample_params
from .datasets import DATASETS, DataError, ImageData, load_dataset
from .stream import FolderImages, iter_batches

__all__ = ["RECIPES", "AugmentRecipe", "ViewParams", "apply_params", "augment", "prepare", "sample_params",
           "DATASETS", "DataError", "ImageData", "load_dataset", "FolderImages", "iter_batches"]
