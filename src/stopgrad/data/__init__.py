"""Data sets as uint8 tensors, and batched augmentation that runs wherever the batch is."""
from .augment import RECIPES, AugmentRecipe, augment, prepare
from .datasets import DATASETS, DataError, ImageData, load_dataset

__all__ = ["RECIPES", "AugmentRecipe", "augment", "prepare", "DATASETS", "DataError", "ImageData",
           "load_dataset"]
