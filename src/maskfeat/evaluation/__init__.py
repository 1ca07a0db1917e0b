"""Evaluation metrics of the downstream tasks (AVA frame mAP: :mod:`maskfeat.evaluation.ava`)."""
