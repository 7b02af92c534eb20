"""What every training script runs after reading its config: the family's model, adapter and data
(mmrl.modalities), then the loop."""
from __future__ import annotations

from mmrl.core.trainer import train
from mmrl.modalities import family


def train_family(cfg):
    """Build the model and adapter of `cfg.model.modality`, load its training examples and train; returns
    the metrics log."""
    fam = family(cfg.model.modality)
    model, adapter = fam.build(cfg)
    examples, data_stats = fam.training_examples(cfg, adapter)
    return train(cfg, adapter, model, examples, data_stats=data_stats or None)
