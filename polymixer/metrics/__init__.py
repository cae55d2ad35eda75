"""Metrics of generated samples: the Fréchet distance on any feature network, a bundled
digit classifier (its penultimate features, its texture features and its predictions),
conditional accuracy, and measures of how the strokes are drawn (stroke statistics and their
Fréchet distance, k-NN precision and recall; :mod:`polymixer.metrics.stroke`); for clips, a
bundled clip classifier for a Fréchet distance over 8-frame windows
(:mod:`polymixer.metrics.clip_classifier`) and measures over time: identity, motion
(:mod:`polymixer.metrics.temporal`).

    from polymixer.metrics import load_digit_classifier, evaluate_samples, to_classifier_input
    clf = load_digit_classifier()
    x = to_classifier_input(samples)                      # (N, 1, 32, 32) in [-1, 1]
    evaluate_samples(x, labels, to_classifier_input(real_images), clf.features, clf)
    stroke_frechet_distance(stroke_statistics(x), stroke_statistics(to_classifier_input(real_images)))

``polymixer eval`` (:func:`polymixer.evaluate.evaluate_checkpoint`) wires them to a checkpoint.
"""

from .clip_classifier import ClipClassifier, ClipClassifierConfig, load_clip_classifier
from .classifier import (DigitClassifier, DigitClassifierConfig, bundled_classifier_folder, load_digit_classifier,
                         recenter_digits, to_classifier_input)
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features, trace_sqrt_product
from .sample_metrics import conditional_accuracy, evaluate_samples, per_class_accuracy
from .stroke import STROKE_STATISTICS, count_ink_fragments, precision_recall, stroke_frechet_distance, stroke_statistics
from .temporal import compare_motion, digit_centroids, identity_consistency, motion_statistics

__all__ = ["frechet_distance", "feature_statistics", "frechet_distance_from_features", "trace_sqrt_product",
           "DigitClassifier", "DigitClassifierConfig", "load_digit_classifier", "bundled_classifier_folder",
           "to_classifier_input", "recenter_digits", "conditional_accuracy", "per_class_accuracy",
           "evaluate_samples", "STROKE_STATISTICS", "stroke_statistics", "stroke_frechet_distance",
           "count_ink_fragments", "precision_recall", "ClipClassifier", "ClipClassifierConfig", "load_clip_classifier",
           "digit_centroids", "motion_statistics", "identity_consistency", "compare_motion"]
