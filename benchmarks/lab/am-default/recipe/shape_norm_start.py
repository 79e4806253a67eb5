"""Write the model a ``model.shape_norm`` continuation started from, so that it can be
averaged with the run (``fusion average START RUN``): the starting checkpoint's weights
(a model without ``shape_norm``) with the run's config and spectral-shape reference.

    python shape_norm_start.py stage24.pt cpu26/model.pt stage24-shaped.pt

``fusion average`` itself refuses checkpoints whose configs differ, as these two do.
"""
import dataclasses
import sys

from fusion.am.model import CheckpointError, ModelConfig, load_checkpoint, save_checkpoint

start_path, run_path, out_path = sys.argv[1:4]
start, run = load_checkpoint(start_path, kind="ctc"), load_checkpoint(run_path, kind="ctc")
start_cfg, run_cfg = ModelConfig.from_dict(dict(start["config"])), ModelConfig.from_dict(dict(run["config"]))
if start_cfg.shape_norm or not run_cfg.shape_norm:
    raise CheckpointError(f"{start_path} must be without shape_norm and {run_path} with it")
if dataclasses.replace(start_cfg, shape_norm=True) != run_cfg:
    raise CheckpointError(f"{start_path} and {run_path} differ in more than shape_norm")
out = {k: v for k, v in start.items() if k != "train_state"}
out["config"] = run_cfg.to_dict()
out["model"] = {**start["model"], "shape_ref": run["model"]["shape_ref"]}
save_checkpoint(out_path, out)
print(f"{out_path}: {start_path}'s weights, {run_path}'s config and shape reference")
