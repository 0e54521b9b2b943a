"""STRIDE and the baselines on supervised classifiers (any torch.nn.Module: vision, tabular).

`attribute_classifier` is the entry point; `ClassifierTask` is the model family the shared
STRIDE core and the baselines talk to.
"""

from stride.classifiers.api import attribute_classifier, classifier_config
from stride.classifiers.task import ClassifierTask

__all__ = ["ClassifierTask", "attribute_classifier", "classifier_config"]
