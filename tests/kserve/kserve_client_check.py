"""Run by tests/kserve/test_runtime.py in its own process (kserve and tritonclient.grpc cannot share one):
KServe's own InferenceRESTClient sends an image to graft's KServe runtime over OIP v2; prints the answer as JSON.

    python tests/kserve/kserve_client_check.py URL MODEL KEY IMAGE
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, key: str, image: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    with open(image, "rb") as f:
        data = f.read()
    inp = InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    request = InferRequest(model_name=model, infer_inputs=[inp], parameters={"topk": 2})
    try:
        response = await client.infer(url, request, model_name=model, headers={"Authorization": f"Bearer {key}"})
    finally:
        await client.close()
    out = {o.name: o.as_numpy().tolist() for o in response.outputs}
    labels = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in out["labels"]]
    print(json.dumps({"model_name": response.model_name, "model_version": response.model_version, "labels": labels,
                      "probabilities": out["probabilities"]}))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
