"""The second security review's attacks for bench/reliability.py, against the real service on 127.0.0.1:
idle connections, a web page driving the insecure dev mode (cross-site requests, DNS rebinding), erasure of a
repeated picture, and a day of tiny captures against a 1 MB budget (the admin's index and SQLite, in-process).
"""

from __future__ import annotations

import io
import logging
import math
import random
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image

from bench._service import ADMIN, ADMIN_TOKEN, Service
from bench.load import percentile
from graft.core.capture import read_captures

log = logging.getLogger("bench.attacks")
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # headers that never end
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)
    return value


class IdleSockets:
    """``n`` connections that send part of a request's headers, then a byte a second, and never finish."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.socks: list[socket.socket] = []
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(PARTIAL)
            self.socks.append(s)
        while not self._stop.wait(1.0):
            for s in [s for s in self.socks if s.fileno() >= 0]:
                try:
                    s.sendall(b"X")
                except OSError:  # the server closed it: its deadline, or it gave way
                    self.closed_by_server += 1
                    s.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            s.close()


def idle_connections(svc: Service, counts: tuple[int, ...] = (64, 1000), hold_s: float = 12.0) -> dict[str, Any]:
    """Probes (a new connection each, as a kubelet's) and an admin keep their answers within 1 s while ``n`` idle
    sockets are held, for ``hold_s`` (past the 10 s header deadline)."""
    url, port = str(svc.admin.base_url).rstrip("/"), int(svc.admin.base_url.port or 0)
    out: dict[str, Any] = {"check": f"{' then '.join(map(str, counts))} idle connections held {hold_s:.0f} s while "
                                    "probes and an admin ask"}  # fmt: skip
    ok = True
    for n in counts:
        attack = IdleSockets(port, n)
        latencies, statuses = [], Counter[str]()
        t_end = time.monotonic() + hold_s
        while time.monotonic() < t_end:
            for path, headers in (("/healthz", {}), ("/readyz", {}), ("/v1/models", ADMIN), ("/console/login", {})):
                t0 = time.monotonic()
                try:
                    statuses[str(httpx.get(url + path, headers=headers, timeout=5).status_code)] += 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
        attack.stop()
        good = set(statuses) == {"200"} and max(latencies) < 1.0
        ok = ok and good
        out[f"{n} idle"] = {
            "requests": sum(statuses.values()),
            "statuses": dict(statuses),
            "p50_ms": round(1000 * percentile(latencies, 50), 1),
            "max_ms": round(1000 * max(latencies), 1),
            "closed_by_server": attack.closed_by_server,
        }
    out["passed"] = ok
    return out


def _state(c: httpx.Client) -> tuple[Any, ...]:
    labels = sorted(x["name"] for x in c.get("/v1/labels").json()["labels"])
    return c.get("/v1/samples/stats").json()["total"], tuple(labels), len(c.get("/v1/jobs").json()["jobs"])


def insecure_web_pages(svc: Service, image: bytes) -> dict[str, Any]:
    """What a page in the developer's browser can send to an admin in GRAFT_INSECURE_DEV mode: every one refused."""
    c, port, evil = svc.admin, svc.admin.base_url.port, "https://evil.example"
    before = _state(c)
    files = [("file", ("x.jpg", image, "image/jpeg"))]
    cases: list[tuple[str, str, str, dict[str, str], dict[str, Any]]] = [
        ("cross-site multipart sample, new label", "POST", "/v1/samples", {"Origin": evil}, {"files": files,
                                                                                            "data": {"label": "evil"}}),
        ("cross-site text/plain retrain", "POST", "/v1/retrain", {"Origin": evil, "Content-Type": "text/plain"},
         {"content": b"{}"}),
        ("Sec-Fetch-Site cross-site retrain, no Origin", "POST", "/v1/retrain",
         {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}, {"content": b"{}"}),
        ("Origin null label", "POST", "/v1/labels", {"Origin": "null"}, {"json": {"name": "evil"}}),
        ("another localhost port", "DELETE", "/v1/labels/bees", {"Origin": "http://localhost:3000"}, {}),
        ("DNS rebinding: read models", "GET", "/v1/models", {"Host": f"rebind.evil.example:{port}"}, {}),
        ("DNS rebinding: read samples", "GET", "/v1/samples", {"Host": f"rebind.evil.example:{port}"}, {}),
        ("cross-site fetch of the models", "GET", "/v1/models", {"Sec-Fetch-Site": "cross-site",
                                                                 "Sec-Fetch-Mode": "cors"}, {}),
    ]  # fmt: skip
    statuses: dict[str, int] = {}
    for name, method, path, headers, kw in cases:
        statuses[name] = c.request(method, path, headers=headers, **kw).status_code
    after = _state(c)
    own = c.get("/v1/models", headers={"Host": f"127.0.0.1:{port}"}).status_code
    refused = all(400 <= s < 500 for s in statuses.values())
    return {"check": "a web page against the insecure dev mode (cross-site, DNS rebinding)", "requests": len(cases),
            "statuses": dict(Counter(statuses.values())), "wrong": [n for n, s in statuses.items() if s < 400],
            "stored_before_after": [before, after], "own_programs": own,
            "passed": refused and before == after and own == 200}  # fmt: skip


def erase_repeated_picture(svc: Service, capture_dir: Path, image: bytes, name: str) -> dict[str, Any]:
    """The same picture served three times and once re-encoded; DELETE one capture; nothing of it is left, and a
    later capture of it is erased as it is indexed."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").save(buf, "JPEG", quality=80)
    copies = [image, image, image, buf.getvalue()]
    url, headers = svc.predict_url, {**svc.ts.headers(), "Content-Type": "image/jpeg"}
    answers = [httpx.post(url, content=b, headers=headers, timeout=60).status_code for b in copies]

    def captured(at_least: int) -> list[str] | None:
        ids = [c.record.id for c in read_captures(capture_dir, name)]
        return ids if len(ids) >= at_least else None

    ids = wait_for(lambda: captured(4), 60, what="four captures")
    wait_for(lambda: svc.admin.get(f"/v1/review/{ids[-1]}", headers=ADMIN).status_code == 200, 60, what="indexing")
    deleted = svc.admin.delete(f"/v1/review/{ids[1]}", headers=ADMIN).status_code
    images = Counter(svc.admin.get(f"/v1/review/{i}/image", headers=ADMIN).status_code for i in ids)

    def kept() -> int:
        segments = b"".join(p.read_bytes() for p in (capture_dir / name).glob("*.seg"))
        return sum(segments.count(b) for b in set(copies))

    left = kept()
    answers.append(httpx.post(url, content=image, headers=headers, timeout=60).status_code)
    later = wait_for(lambda: captured(len(ids) + 1), 60, what="the later capture")[-1]
    status = wait_for(lambda: (s := svc.admin.get(f"/v1/review/{later}", headers=ADMIN).status_code) != 404 and s,
                      60, what="the later capture indexed")  # fmt: skip
    queued = [i["id"] for i in svc.admin.get("/v1/review", params={"limit": 200}, headers=ADMIN).json()["items"]]
    total = svc.admin.get("/v1/samples/stats", headers=ADMIN).json()["total"]
    uploads = [svc.admin.post("/v1/samples", files={"file": (f"again{k}.jpg", b, "image/jpeg")},
                              data={"label": "ants"}, headers=ADMIN).status_code for k, b in enumerate(copies[-2:])]
    stored = svc.admin.get("/v1/samples/stats", headers=ADMIN).json()["total"] - total
    return {"check": "erasure of a picture captured 3 times and once re-encoded; later captures and uploads of it",
            "predictions": answers, "delete": deleted, "copies_image_status": dict(images),
            "copies_left_in_segments": left, "later_capture": status, "later_bytes_left": kept(),
            "in_queue": later in queued or any(i in queued for i in ids), "later_uploads": uploads,
            "samples_stored_by_them": stored,
            "passed": deleted == 200 and set(images) == {410} and left == 0 and status == 410 and kept() == 0
                      and all(a == 200 for a in answers) and uploads == [409, 409] and stored == 0}  # fmt: skip


def _tiny(i: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (8, 8), random.Random(i).randbytes(192)).save(buf, "PNG")
    return buf.getvalue()


def capture_day(hours: float = 24.0, rate: int = 100, budget_mb: int = 1) -> dict[str, Any]:
    """``hours`` of tiny captures at ``rate``/s through the handler's writer (its disk budget) and the admin's index
    (indexed and swept every simulated 5 s as the admin does, with its drift-window rule: pruned captures of the
    last ``GRAFT_DRIFT_WINDOW_S`` keep their row, marked gone, until they leave it), on real files and SQLite; the
    database's size and rows every simulated 10 minutes.

    Simulated time runs faster than the wall clock: a capture's time is when the writer took it, so the window's
    start is the wall time at which the pass one window before this one began."""
    from admin.domain.captures import CaptureIndex
    from admin.settings import AdminSettings
    from admin.store.captures import CaptureStore
    from admin.store.db import Database
    from admin.store.samples import SampleStore
    from handlers.capture import CaptureWriter

    defaults = AdminSettings()
    tmp = Path(tempfile.mkdtemp(prefix="graft-capture-day-"))
    stored = [0]
    writer = CaptureWriter(tmp / "captures", "m", "1", ["a", "b"], 1.0, budget_mb * 2**20,
                           lambda o, n: stored.__setitem__(0, stored[0] + (n if o == "stored" else 0)))  # fmt: skip
    db = Database(tmp / "admin.sqlite3")
    store = CaptureStore(db)
    index = CaptureIndex(store, SampleStore(db, tmp / "samples"), tmp / "captures", 10**7)
    pool = [_tiny(i) for i in range(20_000)]
    step_s = 5.0  # the admin indexes (and sweeps) every 5 s
    per_pass, passes = round(step_s * rate), round(hours * 3600 / step_s)
    window = round(defaults.drift_window_s / step_s)  # passes
    began: list[float] = []  # wall time at which each pass (simulated 5 s) began
    sizes: list[int] = []
    rows: list[int] = []
    t0 = time.monotonic()
    for p in range(passes):
        began.append(time.time())
        for i in range(p * per_pass, (p + 1) * per_pass):
            while writer.queue.full():
                time.sleep(0.0005)
            writer.offer(pool[i % len(pool)], [0.6, 0.4], str(i))
        wait_for(lambda p=p: stored[0] >= (p + 1) * per_pass, 60, what="the writer")  # type: ignore[misc]
        while index.sync("m", limit=1000):
            pass
        keep_since = began[max(0, p + 1 - window)]  # simulated now minus the drift window
        index.sweep("m", defaults.capture_index_max, keep_since)
        if (p + 1) % 120 == 0 or p + 1 == passes:  # every simulated 10 minutes
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(sum(f.stat().st_size for f in tmp.glob("admin.sqlite3*")))
            rows.append(store.rows())
            # a long run stopped early still leaves its curve in the log
            log.info("simulated %.2f h: %d captures, db %.2f MB, %d index rows, %.0f s wall", (p + 1) * step_s / 3600,
                     stored[0], sizes[-1] / 2**20, rows[-1], time.monotonic() - t0)  # fmt: skip
    segments = sum(f.stat().st_size for f in (tmp / "captures" / "m").glob("*.seg"))
    db.close()
    shutil.rmtree(tmp, ignore_errors=True)  # the writer is idle: everything offered was stored
    bound = defaults.capture_index_max * 1024  # the index's cap at 1 KiB a row (about 650 bytes measured)
    return {"check": f"{hours:g} h of tiny captures at {rate}/s against a {budget_mb} MB budget (simulated, with the "
                     f"{defaults.drift_window_s:g} s drift window and a {defaults.capture_index_max:,}-row cap)",
            "captures": stored[0], "db_mb_first_10_min": round(sizes[0] / 2**20, 2),
            "db_mb_max": round(max(sizes) / 2**20, 2), "db_mb_final": round(sizes[-1] / 2**20, 2),
            "index_rows_max": max(rows), "index_rows_final": rows[-1],
            "bytes_per_row": round(max(sizes) / max(1, max(rows))),
            "db_mb_every_10_min": [round(x / 2**20, 2) for x in sizes], "segment_mb": round(segments / 2**20, 2),
            "seconds": round(time.monotonic() - t0),
            "passed": max(rows) <= defaults.capture_index_max + per_pass and max(sizes) <= bound
                      and segments <= budget_mb * 2**20 * 1.1}  # fmt: skip


def _from(address: str, url: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z reaches a loopback server on Linux)."""
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=10)


def _ask(client: httpx.Client, statuses: Counter[str], path: str, headers: dict[str, str]) -> float:
    t0 = time.monotonic()
    try:
        statuses[str(client.get(path, headers=headers).status_code)] += 1
    except httpx.HTTPError as e:
        statuses[type(e).__name__] += 1
    return time.monotonic() - t0


def token_flood(svc: Service, seconds: float = 10.0, threads: int = 8) -> dict[str, Any]:
    """``threads`` clients at one address (127.0.0.66: no other row uses it, its backoff outlives the row) send
    wrong bearer tokens as fast as they are answered, for ``seconds``; the token's holder (127.0.0.2) asks every
    0.1 s and probes (127.0.0.3) ask too. Past the free tries the guesser is answered 429 and its tokens are not
    judged: judged guesses grow with the log of the time, whatever the rate; nobody else sees a 429 or a 5xx."""
    from admin.api.sessions import FREE_FAILURES

    url = str(svc.admin.base_url).rstrip("/")
    guesses, holder, probes = Counter[str](), Counter[str](), Counter[str]()
    latencies: list[float] = []
    stop = threading.Event()

    def guess(k: int) -> None:
        with _from("127.0.0.66", url) as c:
            i = 0
            while not stop.is_set():
                _ask(c, guesses, "/v1/models", {"Authorization": f"Bearer guess-{k}-{i:012d}"})
                i += 1

    attackers = [threading.Thread(target=guess, args=(k,), daemon=True) for k in range(threads)]
    t0 = time.monotonic()
    for t in attackers:
        t.start()
    with _from("127.0.0.2", url) as own, _from("127.0.0.3", url) as probe:
        while time.monotonic() - t0 < seconds:
            latencies.append(_ask(own, holder, "/v1/models", ADMIN))
            latencies += [_ask(probe, probes, p, {}) for p in ("/healthz", "/readyz")]
            time.sleep(0.1)
    stop.set()
    for t in attackers:
        t.join(15)
    took = time.monotonic() - t0
    judged = guesses["401"]
    bound = FREE_FAILURES + 1 + math.log2(1 + took)  # free tries, then one a wait of 1, 2, 4... seconds
    return {"check": f"wrong bearer tokens from {threads} clients at one address for {seconds:g} s (backoff, 429) "
                     "while the token's holder and probes ask from others",
            "guesser": dict(guesses), "guesses_judged": judged, "judged_bound": round(bound, 1),
            "holder": dict(holder), "probes": dict(probes), "others_max_ms": round(1000 * max(latencies), 1),
            "passed": 0 < judged <= bound and guesses["429"] > 0 and set(holder) == {"200"}
                      and set(probes) == {"200"} and max(latencies) < 1.0}  # fmt: skip


def slow_sign_ins(svc: Service, n: int = 64, seconds: float = 12.0) -> dict[str, Any]:
    """``n`` sign-in requests from one address (127.0.0.1) whose 1,000-byte bodies come a byte a second, each
    reopened as soon as it is answered or closed, for ``seconds`` (past the small-body deadline); probes, an admin
    and another user signing in ask from 127.0.0.9 on new connections: all answered, none a 5xx, within 1 s."""
    from bench.admin_attacks import SlowSignIns, everyone_else

    attack = SlowSignIns(int(svc.admin.base_url.port or 0), n)
    try:
        seen = everyone_else(str(svc.admin.base_url).rstrip("/"), seconds, ADMIN_TOKEN)
    finally:
        answers = attack.stop()
    return {"check": f"{n} slow sign-in bodies from one address (a byte a second, reopened when answered) for "
                     f"{seconds:g} s while probes, an admin and another user ask from another",
            "others": {k: v for k, v in seen.items() if k != "ok"}, "attacker_answers": answers,
            "passed": bool(seen["ok"]) and not any(s.startswith("5") for s in seen["statuses"])}  # fmt: skip
