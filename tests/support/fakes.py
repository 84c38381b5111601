"""Stand-ins for the heavy parts of a job, at the boundaries the job tests do not need real (training, evaluation).

* ``python tests/support/fakes.py train --config FILE``: a trainer that reads the job's TrainConfig JSON
  and writes a valid run folder (``model.json`` with the manifest's labels, ``progress.json``) in a
  fraction of a second per epoch. ``GRAFT_FAKE_QUALITY`` is the quality the card claims (default 0.8),
  ``GRAFT_FAKE_EPOCH_S`` the time per epoch, ``GRAFT_FAKE_FAIL=1`` makes it crash.
* :func:`fake_evaluate`: predicts the right label for a fixed, path-determined fraction Q of images.
* :func:`toy_export`: a real ``.mar`` whose tiny handler answers ``{"label", "score", "version"}``.
* :class:`FakeRollout`: an in-memory server with the same contract as the TorchServe rollout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from graft.core.artifact import UNAVERAGED_DIR, ModelCard, read_card, write_card
from graft.core.errors import ConflictError, UpstreamError

TOY_HANDLER = """
import json, os, time

def handle(data, context):
    if data is None:  # called once at load time
        return None
    model_dir = context.system_properties.get("model_dir")
    with open(os.path.join(model_dir, "toy.json")) as f:
        toy = json.load(f)
    time.sleep(toy["delay_s"])  # stands for inference time: widens the window a swap must not break
    version = context.manifest["model"].get("modelVersion")
    return [json.dumps([{"label": toy["labels"][0], "score": 1.0, "version": version}]) for _ in data]
"""


def _fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


# --------------------------------------------------------------------------- fake trainer


FAKE_TRAINER = [sys.executable, str(Path(__file__).resolve())]


def fake_train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fake-train", allow_abbrev=False)
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    output, epochs = Path(config["output"]), int(config.get("epochs", 2))
    manifest = json.loads(Path(config["manifest"]).read_text())
    labels = sorted({i["label"] for i in manifest["items"] if i["split"] == "train"})
    quality = float(os.environ.get("GRAFT_FAKE_QUALITY", "0.8"))
    output.mkdir(parents=True, exist_ok=True)
    (output / "environment.json").write_text(json.dumps(sorted(os.environ)))  # what the trainer inherited
    epoch_s = float(os.environ.get("GRAFT_FAKE_EPOCH_S", "0.05"))
    for epoch in range(1, epochs + 1):
        time.sleep(epoch_s)
        if os.environ.get("GRAFT_FAKE_FAIL"):
            print("fake trainer: simulated crash in epoch", epoch, file=sys.stderr)
            return 3
        tmp = output / "progress.json.tmp"
        tmp.write_text(json.dumps({"phase": "train", "epoch": epoch, "epochs": epochs, "fraction": epoch / epochs}))
        tmp.replace(output / "progress.json")
    parent = Path(config["init_from"]) if config.get("init_from") else None
    write_toy_card(output, labels, quality, manifest["digest"], parent=parent, dataset_path=Path(config["manifest"]))
    if own := os.environ.get("GRAFT_FAKE_UNAVERAGED"):  # averaged with the champion: the refit alone beside it
        write_toy_card(output / UNAVERAGED_DIR, labels, float(own), manifest["digest"], parent=parent,
                       dataset_path=Path(config["manifest"]))  # fmt: skip
    print(json.dumps({"run_dir": str(output), "val_accuracy": quality}))
    return 0


def write_toy_card(
    run_dir: Path, labels: Sequence[str], quality: float, digest: str = "sha256:test", parent: Path | None = None,
    dataset_path: Path | None = None,
) -> ModelCard:  # fmt: skip
    card = ModelCard.model_validate(
        {
            "backbone": "fake",
            "num_classes": len(labels),
            "labels": list(labels),
            "preprocessing": {"resize": 8, "crop": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
            "recipe": {"backbone": "fake", "weights": "none"},
            "metrics": {"val_accuracy": quality},
            "lineage": {"dataset_digest": digest, "parent_model": str(parent) if parent else None,
                        "dataset_path": str(dataset_path) if dataset_path else None},
            "fake_quality": quality,
        }
    )
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_card(Path(run_dir), card)
    return card


# --------------------------------------------------------------------------- fake evaluate / export


def fake_evaluate(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu"
) -> tuple[list[str | None], list[str]]:
    card = read_card(run_dir)
    quality = float(getattr(card, "fake_quality", 0.5))
    labels = card.labels
    preds: list[str | None] = []
    for path, label in samples:
        right = label in labels and _fraction(Path(path).name) < quality
        wrong = labels[(labels.index(label) + 1) % len(labels)] if label in labels else labels[0]
        preds.append(label if right else wrong)
    return preds, labels


def _redness(path: Path) -> float | None:
    """The share of red in red + blue over the whole picture; None for an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            r, _g, b = im.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))  # type: ignore[misc]
    except OSError:
        return None
    return float(r / (r + b)) if r + b else 0.5


def tint_evaluate(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu"
) -> tuple[list[str | None], list[str]]:
    """A model that sees colour: reddish images are the card's first label, the others its second (whatever label
    they were uploaded with; ``tests.support.images.tinted`` makes them). None for an unreadable file."""
    labels = read_card(run_dir).labels
    reds = [_redness(path) for path, _ in samples]
    return [None if red is None else labels[0] if red > 0.5 else labels[1] for red in reds], labels


def tint_scores(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu") -> list[list[float] | None]:
    """``tint_evaluate``'s probabilities: the share of red is the first label's (the data check's ranking reads
    them: the redder a picture labelled with the second label, the likelier its label is wrong)."""
    labels = read_card(run_dir).labels
    out: list[list[float] | None] = []
    for path, label in samples:
        red = _redness(path)
        probs = {} if red is None else {labels[0]: red, labels[1]: 1 - red}
        out.append([max(probs.values()), probs[label]] if label in probs else None)
    return out


tint_evaluate.scores = tint_scores  # type: ignore[attr-defined]  # the data check ranks its list with these


def failing_scores(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu") -> list[list[float] | None]:
    raise OSError("the ranking pass failed")


def tint_evaluate_unranked(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu"
) -> tuple[list[str | None], list[str]]:
    """``tint_evaluate`` whose probabilities cannot be had: the data check lists its samples unranked."""
    return tint_evaluate(run_dir, samples, device)


tint_evaluate_unranked.scores = failing_scores  # type: ignore[attr-defined]


def card_mar(run_dir: Path, store: Path, name: str, version: str) -> Path:
    """A zip shaped like a graft archive (manifest, model.json, weights): what adoption reads, no handler."""
    import zipfile

    store.mkdir(parents=True, exist_ok=True)
    mar = store / f"{name}-{version}.mar"
    manifest = {"model": {"modelName": name, "modelVersion": version, "handler": "image_classifier.py"}}
    with zipfile.ZipFile(mar, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.write(run_dir / "model.json", "model.json")
        z.writestr("model.safetensors", b"toy weights")
    return mar


def placeholder_export(run_dir: Path, model_store: Path, name: str, version: str, check: Sequence[Path]) -> Path:
    model_store.mkdir(parents=True, exist_ok=True)
    mar = model_store / f"{name}-{version}.mar"
    mar.write_bytes(b"placeholder archive for " + str(run_dir).encode())
    return mar


def toy_export(
    run_dir: Path, model_store: Path, name: str, version: str, check: Sequence[Path] = (), delay_s: float = 0.0
) -> Path:
    """A real TorchServe archive (torch-model-archiver) with the toy handler and the run's labels."""
    labels = read_card(run_dir).labels
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "toy_handler.py").write_text(TOY_HANDLER)
        (t / "toy.json").write_text(json.dumps({"labels": labels, "delay_s": delay_s}))
        (t / "weights.txt").write_text("toy")
        cmd = [
            str(archiver), "--model-name", name, "--version", version, "--handler", str(t / "toy_handler.py"),
            "--serialized-file", str(t / "weights.txt"), "--extra-files", str(t / "toy.json"),
            "--export-path", tmp, "--force",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        model_store.mkdir(parents=True, exist_ok=True)
        mar = model_store / f"{name}-{version}.mar"
        os.replace(t / f"{name}.mar", mar)
    return mar


# --------------------------------------------------------------------------- fake rollout


class FakeRollout:
    """Versions in a dict; ``fail_deploy`` / ``fail_smoke`` hold versions whose step must fail."""

    def __init__(self) -> None:
        self.deployed: dict[str, list[str]] = {}
        self.defaults: dict[str, str] = {}
        self.fail_deploy: set[str] = set()
        self.fail_smoke: set[str] = set()
        self.answers: dict[str, str] = {}  # version -> the label predict() answers (default: the first label)
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        self.calls.append(("deploy", version))
        if version in self.fail_deploy or not Path(mar_path).is_file():
            raise UpstreamError(f"fake: deploying {version} failed")
        with self._lock:
            versions = self.deployed.setdefault(model_name, [])
            if version not in versions:
                versions.append(version)
            self.defaults.setdefault(model_name, version)

    def set_default(self, model_name: str, version: str) -> None:
        self.calls.append(("set_default", version))
        if version not in self.deployed.get(model_name, []):
            raise UpstreamError(f"fake: {version} is not deployed")
        self.defaults[model_name] = version

    def retire(self, model_name: str, version: str) -> None:
        self.calls.append(("retire", version))
        if self.defaults.get(model_name) == version:
            raise ConflictError(f"fake: {version} is the default")
        with self._lock:
            if version in self.deployed.get(model_name, []):
                self.deployed[model_name].remove(version)

    def versions(self, model_name: str) -> list[str]:
        return list(self.deployed.get(model_name, []))

    def default_version(self, model_name: str) -> str | None:
        return self.defaults.get(model_name)

    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        self.calls.append(("smoke_test", version))
        if version in self.fail_smoke:
            raise UpstreamError(f"fake: smoke test of {version} failed")

    def predict(self, model_name: str, version: str, payload: bytes) -> list[tuple[str, float]]:
        if version not in self.deployed.get(model_name, []):
            raise UpstreamError(f"fake: {version} is not deployed")
        return [(self.answers.get(version, "ants"), 0.9), ("other", 0.1)]


if __name__ == "__main__":
    sys.exit(fake_train(sys.argv[1:]))
