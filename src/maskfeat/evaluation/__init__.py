"""Evaluation metrics of downstream tasks: ``maskfeat.evaluation.ava.frame_map`` (AVA v2.2 frame-level mAP)."""
