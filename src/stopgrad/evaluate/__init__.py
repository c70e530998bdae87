"""Evaluation of frozen backbones: kNN, linear probes, transfer, t-SNE and representation geometry."""
from .features import embed, eval_mode, projection_module
from .knn import knn_classify, knn_evaluate, knn_scores, knn_top1, nearest

__all__ = ["embed", "eval_mode", "projection_module", "knn_classify", "knn_evaluate", "knn_scores", "knn_top1",
           "nearest"]
