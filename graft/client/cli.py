"""``graft upload | retrain | status | models | promote | rollback | predict | review | suspects | relabel |
confirm | delete``: the admin from the shell.

Each command is a few lines over :class:`graft.client.Client`; ``--json`` prints the API's JSON for scripts.
Exit status: 0 done, 2 refused (the message says why), and for ``retrain --wait`` 0 promoted, 3 rejected,
4 held for an admin, 1 failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from graft.client import render
from graft.client.api import Client
from graft.client.errors import ApiError, UnauthorizedError
from graft.client.jobs import Job
from graft.core.errors import ConfigError

EXIT_PROMOTED, EXIT_FAILED, EXIT_REJECTED, EXIT_HELD = 0, 1, 3, 4
_EXIT = {"succeeded": EXIT_PROMOTED, "rejected": EXIT_REJECTED, "held": EXIT_HELD, "failed": EXIT_FAILED}


def _connection_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection (default: GRAFT_URL, GRAFT_TOKEN, else graft serve's state folder)")
    g.add_argument("--url", help="the admin's URL (default: GRAFT_URL, else STATE_DIR/endpoints.json, else "
                                 "http://127.0.0.1:8090)")  # fmt: skip
    g.add_argument("--token-file", type=Path, help="file holding the admin token (default: GRAFT_TOKEN, else "
                                                   "STATE_DIR/admin.token)")  # fmt: skip
    g.add_argument("--state-dir", type=Path, help="graft serve's state folder (default: GRAFT_STATE_DIR, else "
                                                  "runs/admin)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")
    return common


def client_of(args: argparse.Namespace) -> Client:
    return Client(args.url, state_dir=args.state_dir, token_file=args.token_file)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# ---------------------------------------------------------------------- commands
def _upload(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        bar = None if args.json else render.ProgressBar("uploading")
        report = c.upload_folder(args.folder, args.label, progress=bar, new_label=args.new_label)
    if args.json:
        _print_json(report.as_dict())
    else:
        print(render.upload_summary(report))
    return 1 if report.refused else 0


def _retrain(args: argparse.Namespace) -> int:
    if args.follow:
        return _follow_existing(args)
    params: dict[str, Any] = {}
    if args.epochs is not None:
        params["epochs"] = args.epochs
    if args.warm_start:
        params["warm_start"] = True
    if args.set:
        params["overrides"] = dict(_setting(text) for text in args.set)
    with client_of(args) as c:
        job = c.retrain(**params)
        if not args.wait:
            job.refresh()
            if args.json:
                _print_json(job.data)
            else:
                print(f"started job {job.id} (candidate version {job.candidate_version}); follow it with "
                      f"`graft retrain --follow {job.id}` or `graft status`")  # fmt: skip
            return 0
        return _follow(job, args)


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as JSON when it is (numbers, true/false), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: write KEY=VALUE, e.g. --set lr=0.001")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _follow(job: Job, args: argparse.Namespace) -> int:
    def show(j: Job) -> None:
        if not args.json:
            print(render.job_line(j), file=sys.stderr, flush=True)

    job.wait(timeout=args.timeout, poll_s=args.poll, on_progress=show)
    if args.json:
        _print_json(job.data)
    else:
        print(render.verdict(job))
    return _EXIT.get(job.status, EXIT_FAILED)


def _follow_existing(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        return _follow(c.job_handle(args.follow), args)


def _status(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        ready = c.ready()
        stats = c.stats()
        jobs = c.jobs(limit=1)
    if args.json:
        _print_json({"ready": ready, "samples": stats, "last_job": jobs[0] if jobs else None})
        return 0 if ready.get("status") == "ready" else 1
    print(f"admin {c.url}: {ready.get('status')}" + (f" ({ready['detail']})" if ready.get("detail") else ""))
    print(f"model {ready.get('model_name') or '-'}, version {ready.get('default_version') or '-'} in service")
    print(f"samples: {stats['total']} ({stats['train']} train, {stats['holdout']} holdout), "
          f"{stats['since_champion']} new since the model in service")  # fmt: skip
    for w in ready.get("warnings") or []:
        print(f"warning: {w}")
    if jobs:
        last = Job(c, jobs[0]["id"], jobs[0])
        status = last.status
        if status == "held" and last.candidate_version == str(ready.get("default_version")):
            status = f"held, then put in service by an admin (version {last.candidate_version})"
        print(render.job_line(last) if not last.done else f"last job {last.id}: {status}: {last.reason}")
    return 0 if ready.get("status") == "ready" else 1


def _models(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        models = c.models()
    _print_json(models) if args.json else print(render.models_table(models))
    return 0


def _promote(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        model = c.promote(args.version, force=args.force)
    _print_json(model) if args.json else print(f"version {model['version']} is in service")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        model = c.rollback()
    _print_json(model) if args.json else print(f"rolled back: version {model['version']} is in service")
    return 0


def _predict(args: argparse.Namespace) -> int:
    results = []
    with client_of(args) as c, c.predictor(args.inference_url, args.key_file, args.model) as p:
        for image in args.images:
            answer = p.predict(image)
            results.append({"image": str(image), **answer})
    if args.json:
        _print_json(results)
        return 0
    for r in results:
        preds = r.get("predictions") or []
        top = ", ".join(f"{x['label']} {x['score']:.3f}" for x in preds[: args.top])
        print(f"{r['image']}: {top}  (version {r.get('model_version', '?')})")
    return 0


def _review(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        items = c.review(limit=args.limit, strategy=args.strategy)
    _print_json(items) if args.json else print(render.review_table(items))
    return 0


def _suspects(args: argparse.Namespace) -> int:
    with client_of(args) as c:
        job = c.job_handle(args.job).refresh() if args.job else _last_checked(c)
        url = c.url
    if job is None:
        print("no recent job's data check lists samples to review")
        return 0
    if args.ids:
        print("\n".join(s["id"] for s in job.suspects))
    elif args.json:
        _print_json({"job": job.id, "status": job.status, "suspects": job.suspects})
    else:
        print(render.suspects_table(job, f"{url}/console"))
    return 0


def _last_checked(c: Client, look_back: int = 20) -> Job | None:
    """The newest of the last ``look_back`` jobs whose data check lists samples (a held job's, usually)."""
    for data in c.jobs(limit=look_back):
        job = Job(c, data["id"], data)
        if job.suspects:
            return job
    return None


def _each_sample(args: argparse.Namespace, act: Any, said: Any) -> int:
    """``act(client, id)`` for every id given, going on past a refused one; exit status 1 when any was."""
    refused = 0
    with client_of(args) as c:
        for sample_id in args.ids:
            try:
                answer = act(c, sample_id)
            except UnauthorizedError:  # a wrong token fails every id alike: say it once (exit status 2)
                raise
            except ApiError as e:  # one bad id must not stop the others; unreachable still stops all
                refused += 1
                print(f"refused  {sample_id}: {e}", file=sys.stderr)
                continue
            _print_json(answer) if args.json else print(said(sample_id, answer))
    return 1 if refused else 0


def _relabel(args: argparse.Namespace) -> int:
    def said(sample_id: str, a: dict[str, Any]) -> str:
        now = a["sample"]["label"]
        return f"{sample_id}: {a['previous_label']} -> {now}" if a["changed"] else f"{sample_id}: already {now}"

    return _each_sample(args, lambda c, i: c.relabel(i, args.label, new_label=args.new_label), said)


def _confirm(args: argparse.Namespace) -> int:
    return _each_sample(args, lambda c, i: c.confirm(i, args.label),
                        lambda sample_id, a: f"{sample_id}: {a['sample']['label']} confirmed")  # fmt: skip


def _delete(args: argparse.Namespace) -> int:
    def said(sample_id: str, a: dict[str, Any]) -> str:
        back = f"; {len(a['requeued'])} capture(s) back in the review queue" if a["requeued"] else ""
        return f"{sample_id}: deleted ({a['deleted']['label']}, {a['deleted']['split']}){back}"

    return _each_sample(args, lambda c, i: c.delete_sample(i), said)


# ---------------------------------------------------------------------- parsers
def register(sub: Any) -> None:
    common = [_connection_flags()]

    def add(name: str, func: Any, help_: str, description: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=description, parents=common,
                                                    allow_abbrev=False)  # fmt: skip
        p.set_defaults(func=func)
        return p

    p = add("upload", _upload, "upload a folder of labelled images to the admin",
            "Upload DIR/<label>/* (or, with --label, every image under DIR) as labelled samples, in batches, "
            "with a progress bar; then say how many were stored, already there (duplicates), kept for the "
            "holdout, and refused with the server's reason. Exit status 1 when any was refused.")
    p.add_argument("folder", type=Path, help="a folder of <label>/ subfolders, or of one label's images")
    p.add_argument("--label", help="every image under FOLDER has this label")
    p.add_argument("--new-label", action="store_true", help="confirm a label that looks like a typo of a known one")

    p = add("retrain", _retrain, "start a retraining job (and follow it to the gate's verdict)",
            "Start a retraining job on every sample so far. With --wait, show its phase and progress until the "
            "gate decides, then say why. Exit status with --wait: 0 promoted, 3 rejected (the model in service "
            "is unchanged), 4 held for an admin, 1 failed.")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--follow", metavar="JOB_ID", help="follow a job already started, instead of starting one")
    p.add_argument("--epochs", type=int, help="epochs (default: the model in service's recipe)")
    p.add_argument("--warm-start", action="store_true", help="start from the model in service's weights")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another training setting, e.g. --set lr=0.001 --set trainable_stages=1 (repeatable)")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (the job goes on)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the job (default 1)")

    add("status", _status, "is the service ready; which model serves; samples; the last job",
        "One look at the service: readiness (and why not), the model in service, the samples collected and how "
        "many are new, and the last job. Exit status 1 when the service is not ready.")
    add("models", _models, "list the model versions and which one is in service",
        "Every model version the admin knows: its status (accepted, rejected, ...), holdout accuracy, training "
        "samples and parent; * marks the one in service.")
    p = add("promote", _promote, "put a model version in service",
            "Make VERSION the one TorchServe answers with. A version the gate rejected needs --force.")
    p.add_argument("version", help="the version to serve (graft models lists them)")
    p.add_argument("--force", action="store_true", help="promote a version the gate rejected")
    add("rollback", _rollback, "put the previous model version back in service",
        "Undo the last change of the model in service (a promotion or an earlier rollback).")
    p = add("predict", _predict, "classify images with the model in service (through TorchServe)",
            "Send each IMAGE to TorchServe's inference API with the inference key read from the state folder "
            "(STATE_DIR/torchserve/key_file.json), for the model the admin manages.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", help="TorchServe model name (default: the admin's)")
    p.add_argument("--top", type=int, default=3, help="how many labels to print per image (default 3)")
    p.add_argument("--inference-url", help="TorchServe's inference address (default: GRAFT_INFERENCE_URL, else "
                                           "STATE_DIR/endpoints.json, else http://127.0.0.1:8080)")  # fmt: skip
    p.add_argument("--key-file", type=Path, help="TorchServe's key_file.json (default: STATE_DIR/torchserve/)")
    p = add("review", _review, "list the captured inputs the model was least sure of",
            "The review queue in the terminal: captured inputs nobody labelled yet, the most uncertain first "
            "(label them in the console's review page, or with Client.decide()).")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--strategy", choices=["margin", "entropy", "random"], default="margin",
                   help="margin: smallest top-1 minus top-2 first (default); entropy: largest entropy first")
    _register_corrections(add)


def _register_corrections(add: Any) -> None:
    p = add("suspects", _suspects, "list the samples a job's data check asks you to look at",
            "The samples of a job's data check (a held job's, usually): new samples of a label the model in service "
            "disagrees with unusually often, and those an earlier job listed that nobody reviewed. Without JOB_ID, "
            "the newest recent job that lists any, the likeliest wrong label first. Look at them in the console, then "
            "relabel or delete the wrong ones and confirm the right ones (graft relabel / delete / confirm), and "
            "retrain.")
    p.add_argument("job", nargs="?", metavar="JOB_ID", help="the job (default: the newest that lists samples)")
    p.add_argument("--ids", action="store_true", help="print only the sample ids, one per line (for xargs)")
    p = add("relabel", _relabel, "give stored samples another label",
            "Relabel each sample ID (graft suspects lists them). A sample keeps its split: a holdout sample stays in "
            "the holdout. Exit status 1 when any was refused (the reason is printed).")
    p.add_argument("ids", nargs="+", metavar="ID", help="sample ids (the sha256 of the image's bytes)")
    p.add_argument("--label", required=True, help="the right label")
    p.add_argument("--new-label", action="store_true", help="accept a label that looks like a typo of a known one")
    p = add("confirm", _confirm, "say that stored samples' label is right (admin)",
            "Confirm that each sample ID is what --label says, after looking at it: the data check stops listing it "
            "and no longer counts it against its label, so it holds no candidate. The label must be the sample's "
            "label now (else it is refused: someone relabelled it). Exit status 1 when any was refused.")
    p.add_argument("ids", nargs="+", metavar="ID", help="sample ids (graft suspects lists them)")
    p.add_argument("--label", required=True, help="the label you found right (the samples' label)")
    p = add("delete", _delete, "delete stored samples",
            "Delete each sample ID: the next snapshot leaves it out (a running job keeps its file until it ends). "
            "Exit status 1 when any was refused (the reason is printed).")
    p.add_argument("ids", nargs="+", metavar="ID", help="sample ids (graft suspects lists them)")
