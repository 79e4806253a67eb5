"""The acoustic model: a Conformer CTC model over characters, its training and inference.

Modules:

* :mod:`fusion.am.features` -- audio loading, 80-dim log-mel, CMVN, SpecAugment.
* :mod:`fusion.am.model` -- :class:`CTCModel`, its config and plain-data checkpoints.
* :mod:`fusion.am.config` -- training configs from TOML data.
* :mod:`fusion.am.data` -- in-memory feature sets and duration-bucketed batches.
* :mod:`fusion.am.trainer` -- the shared, exactly resumable training loop.
* :mod:`fusion.am.train` -- CTC training; :mod:`fusion.am.pretrain` -- BEST-RQ pretraining.
* :mod:`fusion.am.infer` -- posteriors for a manifest from any model (adapters).
* :mod:`fusion.cli.am` -- ``fusion train | pretrain | posteriors``.
"""

from fusion.am.features import AudioError, UtteranceError, load_audio
from fusion.am.model import CheckpointError, CTCModel, ModelConfig, load_model

__all__ = [
    "AudioError",
    "CTCModel",
    "CheckpointError",
    "ModelConfig",
    "UtteranceError",
    "load_audio",
    "load_model",
]
