"""Train on a GPU machine from Opus-packed audio (see pack.py).

  gpu_train.py features PREFIX... OUT_DIR     decode + log-mel -> OUT_DIR/<name>.pt
  gpu_train.py train FEATS_DIR CONFIG OUT [PRETRAINED]
  gpu_train.py export RUN_DIR DEST            best/final model as fp16 (small file)
"""
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf
import torch


def chunk_features(args):
    path, items = args
    from fusion.am.features import LogMel
    torch.set_num_threads(1)
    audio = torch.from_numpy(sf.read(path, dtype="float32")[0])
    logmel = LogMel()
    return [(u["id"], u["text"], logmel(audio[u["start"]: u["start"] + u["length"]]).half())
            for u in items]


def features(prefixes, out_dir):
    from fusion.am.data import FeatureSet
    os.makedirs(out_dir, exist_ok=True)
    with ProcessPoolExecutor(16) as ex:
        for prefix in prefixes:
            index = json.load(open(prefix + ".json"))
            chunks = sorted({u["chunk"] for u in index})
            jobs = [(f"{prefix}-{k}.ogg", [u for u in index if u["chunk"] == k]) for k in chunks]
            rows = {r[0]: r for part in ex.map(chunk_features, jobs) for r in part}
            rows = [rows[u["id"]] for u in index]  # manifest order
            offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(torch.tensor([r[2].shape[0] for r in rows]), 0)
            fs = FeatureSet([r[0] for r in rows], [r[1] for r in rows],
                            torch.cat([r[2] for r in rows]), offsets)
            name = Path(prefix).name
            torch.save({"ids": fs.ids, "texts": fs.texts, "feats": fs.flat,
                        "offsets": fs.offsets}, f"{out_dir}/{name}.pt")
            print(f"{name}: {len(fs)} utterances, {fs.total_seconds / 3600:.2f} h", flush=True)


def train(feats_dir, config_path, out, pretrained=None):
    from fusion.am.config import TrainConfig, load_config
    from fusion.am.data import FeatureSet
    from fusion.am.train import train_ctc
    sets = {}
    for name in ("train", "dev"):
        d = torch.load(f"{feats_dir}/{name}.pt", weights_only=True)
        sets[name] = FeatureSet(d["ids"], d["texts"], d["feats"], d["offsets"])
    budget = os.environ.get("BUDGET_MIN")
    overrides = {"run": {"time_budget_minutes": float(budget)}} if budget else {}
    config = load_config(TrainConfig, Path(config_path), overrides)
    try:
        train_ctc(None, None, out, config, pretrained=pretrained, progress=False,
                  train_set=sets["train"], dev_set=sets["dev"])
    except KeyboardInterrupt:
        print("stopped; exporting what there is", flush=True)


def export(run_dir, dest):
    from fusion.am.model import load_checkpoint
    run = Path(run_dir)
    for name in ("model.pt", "best.pt"):
        if (run / name).is_file():
            ck = load_checkpoint(run / name)
            ck["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["model"].items()}
            torch.save(ck, f"{dest}-{name}")
            print(dest, name, os.path.getsize(f"{dest}-{name}"), flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "features":
        features(args[:-1], args[-1])
    elif cmd == "train":
        train(*args)
    else:
        export(*args)
