"""Evaluation of frozen backbones."""
from .knn import embed, knn_classify, knn_top1

__all__ = ["embed", "knn_classify", "knn_top1"]
