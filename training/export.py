"""Export a run folder: ONNX (verified against PyTorch on real images), optionally its INT8 copy
(:mod:`training.quantize`, checked against FP32 on the run's validation images), and a TorchServe ``.mar``."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from graft.core.artifact import MODEL_JSON, ONNX_FILE, ONNX_INT8_FILE, load_model, read_card, write_card
from graft.core.errors import ArtifactError, ExportError
from graft.core.util import child_env
from training.export_settings import ExportSettings, ensure_int8, record_settings
from training.quantize import QuantizeOptions

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER_FILE = REPO_ROOT / "handlers" / "image_classifier.py"
# Code copied into every archive so the handler runs the code the model was exported with: whole packages,
# the handlers and graft's core (import-linter keeps the handlers from importing anything else of ours).
ARCHIVED_PACKAGES = ("handlers", "graft/core")
ONNX_TOLERANCE = 1e-4
OPSET = 17


@dataclass(frozen=True)
class OnnxCheck:
    max_abs_diff: float
    top1_agreement: float
    images: int
    real_images: bool
    opset: int = OPSET


def _check_images(run_dir: Path, explicit: Sequence[Path] | None, limit: int = 16) -> list[Path]:
    """Real images to verify the export on: the ones given, else some of the run's own validation images.

    Never the whole data folder: training decoded it and recorded what it skipped (``run_split``).
    """
    from training.run_images import run_split, spread

    if explicit:
        return [Path(p) for p in explicit][:limit]
    split = run_split(read_card(run_dir))
    return [] if split is None else [i.path for i in spread(split.val, limit)]


def _inputs(run_dir: Path, images: Sequence[Path]) -> tuple[torch.Tensor, bool]:
    """(inputs, whether they are real images): an image that does not decode is a warning with its path."""
    from training.run_images import tensors

    card = read_card(run_dir)
    x, _ = tensors(card, images)  # decoded and transformed as the handler does; unreadable ones logged, left out
    if len(x):
        return torch.from_numpy(x), True
    log.warning("no real images to verify the ONNX export on; using random inputs (pass --check-images DIR)")
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, card.preprocessing.crop, card.preprocessing.crop, generator=g), False


def export_onnx(run_dir: Path, check_images: Sequence[Path] | None = None) -> OnnxCheck:
    """Write ``RUN_DIR/model.onnx`` (input ``input`` N×3×H×W, output ``logits``, dynamic N) and verify it."""
    import onnxruntime as ort

    run_dir = Path(run_dir)
    model, card = load_model(run_dir)
    reference, _ = load_model(run_dir)  # untouched: what the torch backend serves
    if type(getattr(model, "_swish", None)).__name__ == "MemoryEfficientSwish":
        # The custom autograd op has no ONNX form; the plain Swish is the same function. (Only then:
        # set_swish would also replace the ReLU6 of the Lite models.)
        model.set_swish(memory_efficient=False)
    x, real = _inputs(run_dir, _check_images(run_dir, check_images))
    path = run_dir / ONNX_FILE
    torch.onnx.export(
        model,
        (x[:1],),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter: ~0.3 s, exact enough, no onnxscript needed
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = reference(x).numpy()
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    diff = float(abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    check = OnnxCheck(diff, agree, len(x), real_images=real)
    log.info("ONNX check on %d images: max |logit diff| %.2e, top-1 agreement %.3f", len(x), diff, agree)
    if diff > ONNX_TOLERANCE:
        raise ExportError(
            f"ONNX logits differ from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:.0e}) on {len(x)} images; "
            "the model uses an operation the exporter does not translate faithfully"
        )
    card_data = card.model_dump()
    card_data.setdefault("export", {})["onnx"] = asdict(check)
    write_card(run_dir, type(card).model_validate(card_data))
    return check


def _archiver() -> list[str]:
    exe = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "model_archiver.model_packaging"]


def _stage_code(code: Path) -> Path:
    """The handler package and graft's core, laid out to arrive in the archive as packages.

    torch-model-archiver copies a directory's *contents* into the archive root, so the packages go
    one level down (``code/handlers``, ``code/graft/core``) rather than arriving as loose files.
    ``graft/__init__.py`` comes along so that ``graft.core`` imports as a subpackage.
    """
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ARCHIVED_PACKAGES:
        shutil.copytree(REPO_ROOT / package, code / package, ignore=skip)
    shutil.copy2(REPO_ROOT / "graft" / "__init__.py", code / "graft" / "__init__.py")
    return code


def build_mar(
    run_dir: Path,
    model_store: Path,
    name: str,
    version: str,
    model_config: dict[str, Any] | None = None,
    requirements_file: Path | None = None,
) -> Path:
    """Package the run folder, the handler and its packages into ``MODEL_STORE/NAME-VERSION.mar``."""
    from graft.core.handler_settings import model_config_yaml

    run_dir, model_store = Path(run_dir), Path(model_store)
    card = read_card(run_dir)
    files = [run_dir / MODEL_JSON, *_model_files(run_dir, model_config or {})]
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graft-mar-") as tmp:
        staging = Path(tmp)
        code = _stage_code(staging / "code")
        config = staging / "model-config.yaml"
        config.write_text(model_config_yaml(**(model_config or {})))
        extra = [*map(str, files), str(code)]
        cmd = [
            *_archiver(),
            "--model-name", name,
            "--version", version,
            "--handler", str(HANDLER_FILE),
            "--serialized-file", str(run_dir / card.weights_file),
            "--extra-files", ",".join(extra),
            "--config-file", str(config),
            "--export-path", str(staging),
            "--force",
        ]  # fmt: skip
        if requirements_file is not None:
            # For servers that install per-model dependencies (KServe's stock runtime image).
            cmd += ["--requirements-file", str(requirements_file)]
        # torch-model-archiver stages files in $TMPDIR/<model name> (and deletes that folder first): two
        # exports of the same name at once would mix or delete each other's files without a private one.
        private_tmp = staging / "archiver-tmp"
        private_tmp.mkdir()
        env = child_env({"TMPDIR": str(private_tmp)})
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ExportError(f"torch-model-archiver failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        # torch-model-archiver names the file after the model; versioned names let one store hold many.
        mar = model_store / f"{name}-{version}.mar"
        tmp_mar = model_store / f".{name}-{version}.mar.tmp"
        shutil.move(str(staging / f"{name}.mar"), tmp_mar)
        tmp_mar.replace(mar)  # atomic within the store: TorchServe never sees half an archive
    log.info("wrote %s", mar)
    return mar


def _model_files(run_dir: Path, model_config: dict[str, Any]) -> list[Path]:
    """The ONNX file the archive's handler will load: INT8 when it serves INT8, else ``model.onnx`` if there."""
    if model_config.get("precision") == "int8":
        if not (run_dir / ONNX_INT8_FILE).is_file():
            raise ArtifactError(f"{run_dir / ONNX_INT8_FILE} is missing: export with --quantize int8")
        return [run_dir / ONNX_INT8_FILE]
    if (run_dir / ONNX_FILE).is_file():
        return [run_dir / ONNX_FILE]
    if model_config.get("backend", "onnx") == "onnx":
        raise ArtifactError(f"{run_dir / ONNX_FILE} is missing: run the ONNX export first, or choose backend torch")
    return []


def export_run(
    run_dir: Path,
    model_store: Path,
    name: str,
    version: str,
    check_images: Sequence[Path] | None = None,
    model_config: dict[str, Any] | None = None,
    onnx: bool = True,
    requirements_file: Path | None = None,
    quantize: QuantizeOptions | None = None,
) -> Path:
    """ONNX export with verification, the INT8 model when ``quantize`` is given, then the ``.mar``:
    what ``graft export`` does. The archive's settings are recorded in ``model.json`` (``export.archive``)."""
    settings = ExportSettings.build(model_config, quantize)
    if quantize is not None and not onnx:
        raise ExportError("--quantize int8 quantizes the ONNX export: drop --no-onnx")
    if onnx:
        export_onnx(run_dir, check_images)
    if settings.quantize is not None:
        ensure_int8(Path(run_dir), settings.quantize)
    record_settings(Path(run_dir), settings)
    mar = build_mar(run_dir, model_store, name, version, settings.model_config, requirements_file)
    summary = {"mar": str(mar), "onnx": str(Path(run_dir) / ONNX_FILE) if onnx else None,
               "int8": str(Path(run_dir) / ONNX_INT8_FILE) if settings.int8 else None}  # fmt: skip
    log.info("export: %s", json.dumps(summary))
    return mar
