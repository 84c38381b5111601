"""What judging a model costs with the frozen stages' output kept per holdout image (training/frozen_features.py),
against running the whole model, in the same run. Not a timed test.

A MobileNetV2 with the shared ImageNet weights and a 10-class head (the default head recipe: every stage frozen)
predicts ``--images`` Fashion-MNIST t10k pictures written as PNG (Debian's ``dataset-fashion-mnist``):

* whole: the whole model, as the gate ran before (the baseline);
* cold: the same, keeping the frozen stages' output (the first job after the store is empty);
* warm: a second model with another head (the next job's candidate) on the same pictures;
* warm + new: the second model on the pictures plus ``--new`` more (the holdout grew since the last job).

Each reports CPU seconds, wall seconds and ms per picture; the run reports the cache's bytes on disk and the
process's peak RSS.

    PYTHONPATH=$PWD .venv/bin/python bench/frozen_features.py --images 2000 --json bench/results/frozen_features.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._models import WEIGHTS
from bench._runs import finish_report
from graft.core.artifact import Lineage, ModelCard, save_weights, write_card
from graft.core.zoo import create_model, model_stages
from training.evaluate import predict_probabilities
from training.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, read_idx

log = logging.getLogger("bench.frozen_features")


def make_run(folder: Path, seed: int) -> Path:
    """ImageNet backbone, a random 10-class head; the recipe records every backbone stage as frozen."""
    torch.manual_seed(seed)
    model, pre, report = create_model("mobilenet_v2", len(FASHION_MNIST_LABELS), weights=str(WEIGHTS))
    folder.mkdir(parents=True)
    save_weights(folder, model.state_dict())
    frozen = [s.name for s in model_stages(model) if s.name != "head"]
    write_card(folder, ModelCard(backbone="mobilenet_v2", num_classes=len(FASHION_MNIST_LABELS),
                                 labels=list(FASHION_MNIST_LABELS), preprocessing=pre,
                                 recipe={"frozen_stages": frozen, "bench": True},
                                 lineage=Lineage(dataset_digest="sha256:bench", pretrained_weights=report.source)))
    return folder


def timed(label: str, run: Path, paths: list[Path], cache: Path | None) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    probs, _ = predict_probabilities(run, paths, feature_cache=cache)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    out = {"images": len(paths), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
           "ms_per_image_wall": round(1000 * wall / len(paths), 2)}  # fmt: skip
    log.info("%s: %s", label, out)
    assert all(len(p) == len(FASHION_MNIST_LABELS) for p in probs)
    return out


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=fmt)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--new", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not FASHION_MNIST_DIR.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {FASHION_MNIST_DIR} (make setup installs it) and {WEIGHTS} (../shared)")
    pixels = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[: args.images + args.new]
    with tempfile.TemporaryDirectory(prefix="frozen-features-") as tmp:
        root = Path(tmp)
        paths = []
        for i, x in enumerate(pixels):
            path = root / "images" / f"{i:05d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(x, mode="L").save(path)
            paths.append(path)
        old, grown = paths[: args.images], paths
        champion, candidate = make_run(root / "champion", 0), make_run(root / "candidate", 1)
        cache = root / "frozen-features"
        report: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                  "load_avg_at_start": os.getloadavg()}  # fmt: skip
        report["whole"] = timed("whole", champion, old, None)
        report["cold"] = timed("cold", champion, old, cache)
        report["warm"] = timed("warm", candidate, old, cache)
        report["warm_plus_new"] = timed("warm + new", candidate, grown, cache)
        report["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        report["load_avg_at_end"] = os.getloadavg()
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
