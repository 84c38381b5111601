"""The tokens every admin test uses, and the headers that carry them."""

from __future__ import annotations

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SAMPLES_TOKEN = "samples-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SAMPLER = {"Authorization": f"Bearer {SAMPLES_TOKEN}"}
