"""GPU check of the handler, in-process (no Java needed): CUDA vs CPU answers, throughput, GPU memory,
and ONNX Runtime's CUDA provider (which provider really ran each node; the INT8 model's answers there).

Drives ``handlers`` through a TorchServe-like context (``graft.inprocess``) exactly as a worker with
``gpu_id=0`` would: ``cuda:0``, autocast, channels_last, nvjpeg decoding. Prints one report and exits
non-zero when the GPU answers disagree with the CPU's, or when ONNX Runtime has no CUDA provider or
does not run the model on it. Without CUDA it runs the CPU parts only (the ONNX checks on the CPU provider).

    bench/gpu_check.sh [--wheels DIR] [DATA_DIR]   # DATA_DIR: a folder of JPEGs (default ../shared/data/hymenoptera)
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

log = logging.getLogger("gpu_check")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera"
BATCHES = (1, 8, 32, 128)


def find_images(data: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")) if data.is_dir() else []
    if files:
        return [p.read_bytes() for p in files[:limit]]
    log.warning("no JPEGs under %s: generating %d synthetic photos-like JPEGs", data, limit)
    return synthetic_jpegs(limit)


def synthetic_jpegs(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (1024, 768)
        noise = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def model_dir(work: Path, data: Path) -> Path:
    """A run folder + model-config.yaml: the ImageNet MobileNetV2 when ../shared has it, else random weights."""
    from bench._models import WEIGHTS, imagenet_run
    from graft.core.handler_settings import model_config_yaml

    checks = sorted(data.rglob("*.jpg"))[:8] if data.is_dir() else []
    if WEIGHTS.is_file():
        run = imagenet_run(work / "run", check_images=checks)  # ONNX export verified on real images
    else:
        log.warning("%s not found: random MobileNetV2 weights (CPU/GPU agreement still checked)", WEIGHTS)
        run = _random_run(work / "run")
    (run / "model-config.yaml").write_text(model_config_yaml(backend="torch", batch_size=128))
    return run


def _random_run(run: Path) -> Path:
    import torch

    from bench._models import imagenet_run

    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    from graft.core.zoo import build_model

    path = run.parent / "random.pth"
    torch.save(build_model("mobilenet_v2", 1000).state_dict(), path)
    return imagenet_run(run, weights=path)


def handler(run: Path, gpu: int | None, **settings: Any) -> Any:
    import yaml

    from graft.inprocess import LocalHandler

    cfg = yaml.safe_load((run / "model-config.yaml").read_text())
    cfg["handler"].update(settings)
    return LocalHandler(run, gpu_id=gpu, batch_size=128, yaml_config=cfg)


def compare(cpu: Any, gpu: Any, images: list[bytes]) -> tuple[int, float]:
    """(top-1 agreements, max |score difference| of the top-1) between the CPU and GPU handlers."""
    items = [{"body": b} for b in images]
    a = cpu.predict(items)
    b = gpu.predict(items)
    agree, worst = 0, 0.0
    for x, y in zip(a, b, strict=True):
        px, py = x.body["predictions"], y.body["predictions"]
        agree += px[0]["label"] == py[0]["label"]
        worst = max(worst, abs(px[0]["score"] - next((p["score"] for p in py if p["label"] == px[0]["label"]), 0.0)))
    return agree, worst


def throughput(h: Any, images: list[bytes], batch: int, seconds: float = 2.0) -> float:
    import torch

    items = [{"body": images[i % len(images)]} for i in range(batch)]
    h.predict(items)  # warm-up (cuDNN autotune, nvjpeg handles)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        out = h.predict(items)
        n += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    assert all(r.status == 200 for r in out), [r.body for r in out if r.status != 200][:1]
    return n * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None, allow_abbrev=False)
    p.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA, help="folder of JPEGs")
    p.add_argument("--compare", type=int, default=64, help="images compared CPU vs GPU")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per throughput point")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    images = find_images(args.data, max(args.compare, 128))
    print(f"torch {torch.__version__}, {len(images)} images from {args.data if args.data.is_dir() else 'synthetic'}")
    with tempfile.TemporaryDirectory(prefix="graft-gpu-check-") as tmp:
        run = model_dir(Path(tmp), args.data)
        cpu = handler(run, None)
        if not torch.cuda.is_available():
            print("no CUDA: skipping the GPU parts (CPU/GPU agreement, GPU decoding, GPU memory)")
            for b in (1, 8):
                print(f"cpu  batch {b:4d}: {throughput(cpu, images, b, args.seconds):8.1f} img/s")
            onnx_report(run, images, cuda=False)
            return 0
        ok = gpu_report(run, cpu, images, args)
        return 0 if onnx_report(run, images, cuda=True) and ok else 1


def gpu_report(run: Path, cpu: Any, images: list[bytes], args: argparse.Namespace) -> bool:
    import torch

    print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    gpu_dec = handler(run, 0, decode="gpu")
    gpu_cpu_dec = handler(run, 0, decode="cpu")
    print(f"device {gpu_dec.service.device}, autocast {gpu_dec.service.backend.amp_dtype}")
    agree, worst = compare(cpu, gpu_cpu_dec, images[: args.compare])
    ok = agree >= 0.95 * args.compare and worst < 0.05
    print(f"CUDA ({gpu_cpu_dec.service.backend.amp_dtype}) vs CPU, same CPU decoding, {args.compare} images: top-1 "
          f"agrees on {agree}, max top-1 score diff {worst:.4f} -> {'OK' if ok else 'MISMATCH'}")
    agree_dec, worst_dec = compare(cpu, gpu_dec, images[: args.compare])
    ok = ok and agree_dec >= 0.95 * args.compare
    print(f"CUDA with nvjpeg decoding vs CPU: top-1 agrees on {agree_dec}, max top-1 score diff {worst_dec:.4f}"
          " (decoders differ in chroma upsampling / resize)")
    print(f"{'batch':>6} {'gpu decode img/s':>17} {'cpu decode img/s':>17} {'peak GPU MiB':>13}")
    for b in BATCHES:
        torch.cuda.reset_peak_memory_stats()
        fast = throughput(gpu_dec, images, b, args.seconds)
        slow = throughput(gpu_cpu_dec, images, b, args.seconds)
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"{b:6d} {fast:17.1f} {slow:17.1f} {peak:13.0f}")
    onnx = handler(run, 0, backend="onnx")
    print(f"onnx backend providers: {onnx.service.backend.session.get_providers()}; batch 32:"
          f" {throughput(onnx, images, 32, args.seconds):.1f} img/s")
    return ok


def provider_counts(path: Path, providers: list[Any], x: Any, workdir: Path) -> tuple[Any, dict[str, int]]:
    """(logits, how many graph nodes each execution provider ran), read from ONNX Runtime's own profile."""
    import json
    from collections import Counter

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / path.stem)
    sess = ort.InferenceSession(str(path), opts, providers=providers)
    out = sess.run(None, {"input": x})[0]
    events = json.loads(Path(sess.end_profiling()).read_text())
    counts = Counter(e["args"].get("provider", "?") for e in events if e.get("cat") == "Node")
    return out, dict(counts)


def onnx_report(run: Path, images: list[bytes], cuda: bool) -> bool:
    """ONNX Runtime's CUDA provider on the FP32 and INT8 models: available, really used, same answers as the CPU."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from graft.core.artifact import read_card
    from handlers.preprocess import Preprocessor
    from training.quantize import Quantizer

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), providers available: {available}")
    if cuda and "CUDAExecutionProvider" not in available:
        print("FAIL: this onnxruntime has no CUDA provider: install onnxruntime-gpu (bench/gpu_check.sh --wheels DIR)")
        return False
    prep = Preprocessor(read_card(run).preprocessing, torch.device("cpu"), 50_000_000)
    x = np.stack([t.numpy() for t in prep(images[:64]) if isinstance(t, torch.Tensor)])
    gpu: list[Any] = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if cuda else []
    ok = True
    with tempfile.TemporaryDirectory(prefix="graft-onnx-check-") as tmp:
        work = Path(tmp)
        q = Quantizer(run / "model.onnx", work)
        q.calibrate(x)
        int8 = q.build(work / "model.int8.onnx")  # every node INT8: the CUDA provider's QDQ support is the question
        for name, path in (("fp32", run / "model.onnx"), ("int8", int8)):
            ref, on_cpu = provider_counts(path, ["CPUExecutionProvider"], x, work)
            if not cuda:
                print(f"{name}: {on_cpu} (no CUDA: CPU provider only)")
                continue
            got, counts = provider_counts(path, gpu, x, work)
            share = counts.get("CUDAExecutionProvider", 0) / max(1, sum(counts.values()))
            agree = float((ref.argmax(1) == got.argmax(1)).mean())
            diff = float(np.abs(ref - got).max())
            good = share >= 0.9 and agree >= 0.95
            ok = ok and good
            print(f"{name} on CUDA: nodes per provider {counts} ({share:.0%} on CUDA); vs CPU provider on {len(x)}"
                  f" images: top-1 agrees {agree:.3f}, max |logit diff| {diff:.4f} -> {'OK' if good else 'FAIL'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
