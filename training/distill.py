"""Positive-congruent retraining: the refit keeps what the champion knew unless the labels say otherwise.

On a domain near its ceiling, a head retrained on more of the same data moves its boundary by a photo or two
either way, and truth cannot tell that from nothing; the served model then rises and falls from round to round
(docs/benchmarks/gate.md parts 6 and 8). Focal distillation (positive-congruent training, Yan et al., CVPR
2021) adds to the refit's loss, on the training images the champion classifies correctly only, the KL divergence
from the champion's softened outputs: the new head keeps the champion's right answers where its own data do not
disagree, and is free everywhere else. In a miniature of the recipe on frozen features it cut the retrainings
that lost 1 point on ants/bees' truth from 13% to 4% and cost Fashion-MNIST, still climbing, 0.5 points; through
the real retraining loop it did not help (6 truly worse candidates of 48 against 4 without it), so it is off by
default (``--distill 0``).

The other way to keep it is plainer: ``--champion-share W`` averages the refit's head with the champion's (W of
the champion's weights). Through the loop on 32 ants/bees seeds it gave 9 truly worse candidates against 22 at
the same served level (docs/benchmarks/gate.md part 11), and it is the default (W = 0.5). With wrong labels
alone it cut both ways (it halved the damage of a batch the gate let in, and slipped one under the gate that
the gate would have rejected whole; part 12), so the run keeps its own un-averaged model beside it
(``RUN/unaveraged``) and the admin's gate judges both: new data that pull the model significantly the wrong way
are rejected, not let in at half strength (part 14).

The champion's outputs are its head applied to the cached features, and its head averages with ours, which is
exact only when its frozen layers are the candidate's: the same backbone and weights, trained head-only, and the
same labels. Otherwise nothing is distilled or averaged, and ``model.json`` says why.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from graft.core.artifact import UNAVERAGED_DIR, ModelCard, load_model, save_weights, write_card
from training.start import run_reference

if TYPE_CHECKING:  # the trainer imports the loss below
    from training.trainer import Phase, Trainer

log = logging.getLogger(__name__)

TEMPERATURE = 2.0

# The champion's head tensors and its run reference, or why it would not be the champion on our cached features.
Champion = tuple[dict[str, torch.Tensor], str] | str


def focal_distillation(out: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight`` x T^2 x KL(teacher || student) at temperature T, averaged over the batch, counting only the
    images the teacher got right (the others add zero: the labels alone decide them)."""
    right = (teacher.argmax(1) == targets).float()
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(out / TEMPERATURE, 1),
        torch.log_softmax(teacher / TEMPERATURE, 1),
        reduction="none",
        log_target=True,
    ).sum(1)
    return weight * TEMPERATURE**2 * (right * kl).mean()


def average_with_champion(trainer: Trainer, found: Champion | None) -> dict[str, Any] | None:
    """``champion_share`` of the champion's head (``found``: :func:`champion_head`'s answer) and the rest of the
    refit's, in ``trainer.model``: for a linear head on the same features, the logits of the two models averaged
    (an exponential average across retrainings, since the champion is itself one). Returns the evidence for
    ``model.json`` (None when averaging is off)."""
    share = trainer.cfg.champion_share
    unasked = trainer.cfg.teacher is None and "champion_share" not in trainer.cfg.model_fields_set
    if not share or found is None or unasked:  # the default without a champion: nothing to say
        return None
    if isinstance(found, str):
        log.info("champion average: not done: %s", found)
        return {"skipped": found}
    theirs, reference = found
    ours = trainer.model.state_dict()
    trainer.unaveraged = {k: ours[k].detach().cpu().clone() for k in theirs}  # judged too: save_unaveraged
    blended = {k: (1 - share) * ours[k].detach().cpu() + share * theirs[k].to(ours[k].dtype) for k in theirs}
    trainer.model.load_state_dict(blended, strict=False)
    log.info("champion average: the new head is %.2f of the champion's and %.2f of the refit's", share, 1 - share)
    return {"teacher": reference, "champion_share": share}


def save_unaveraged(trainer: Trainer, run_dir: Path, card: ModelCard) -> Path | None:
    """The refit's own model, before averaging, as a run folder ``RUN/unaveraged`` (the same card, its own
    weights): the gate judges it too, so that new data which pull the model significantly the wrong way are not
    let in at half strength. None when nothing was averaged."""
    out = run_dir / UNAVERAGED_DIR
    if trainer.unaveraged is None:
        shutil.rmtree(out, ignore_errors=True)  # an earlier run's, in a reused output folder
        return None
    out.mkdir(exist_ok=True)
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    save_weights(out, {**state, **trainer.unaveraged})
    recipe = {**card.recipe, "unaveraged": "the refit's own head, before averaging with the champion's"}
    write_card(out, card.model_copy(update={"recipe": recipe}))
    return out


def _unfit(
    trainer: Trainer, head: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], labels: list[str]
) -> str | None:
    """Why the champion's head on our cached features would not be the champion (None: it would)."""
    if labels != trainer.data.labels:
        return f"the champion's labels {labels} are not this run's {trainer.data.labels}"
    ours = trainer.model.state_dict()
    if set(theirs) != set(ours):
        return "the champion has another architecture"
    for k, v in ours.items():
        if k not in head and not torch.equal(theirs[k], v.detach().cpu()):
            return (f"the champion's frozen layers differ from this run's (first: {k}): "
                    "it trained deeper or from other weights")  # fmt: skip
    return None


def champion_head(trainer: Trainer, head: dict[str, torch.Tensor]) -> Champion | None:
    """The teacher's head tensors (the keys of ``head``) and its run reference, or why it would not be the
    champion on this run's cached features; None when neither distillation nor averaging is on (the champion is
    then not read at all). A refit asks once, before it trains: the frozen layers it compares do not change."""
    if not (trainer.cfg.distill or trainer.cfg.champion_share):
        return None
    if trainer.cfg.teacher is None:  # a first model: say so only to whoever asked for it by name
        asked = trainer.cfg.distill or "champion_share" in trainer.cfg.model_fields_set
        return "no champion (a first model)" if asked else None
    teacher_dir = Path(trainer.cfg.teacher)
    champion, card = load_model(teacher_dir)
    theirs = champion.state_dict()
    why = _unfit(trainer, head, theirs, card.labels)
    if why is not None:
        return why
    return {k: theirs[k] for k in head}, run_reference(teacher_dir, card)


def teacher_outputs(
    trainer: Trainer, phase: Phase, found: Champion | None
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The champion's logits on the pooled cached features (None when not distilling), and the evidence for
    ``model.json`` (None when distillation is off). ``found``: :func:`champion_head`'s answer."""
    cfg = trainer.cfg
    if not cfg.distill or found is None:
        return None, None
    if isinstance(found, str):
        return _skip(found)
    theirs, reference = found
    cached = trainer.cache(phase)
    assert cached is not None  # a refit runs on the cache
    feats, targets = cached.pooled()
    ours = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if k in theirs}
    suffix = cached.split.suffix
    try:
        # The suffix shares the model's head: lend it the champion's head for one pass, then give ours back.
        trainer.model.load_state_dict(theirs, strict=False)
        suffix.eval()
        device = next(suffix.parameters()).device
        with torch.no_grad():
            logits = torch.cat([suffix(feats[i : i + 256].to(device)).float().cpu() for i in range(0, len(feats), 256)])
    finally:
        trainer.model.load_state_dict(ours, strict=False)
    right = int((logits.argmax(1) == targets).sum())
    log.info("distill: the champion is right on %d of %d training and validation images; the refit keeps them "
             "with weight %.2f", right, len(targets), cfg.distill)  # fmt: skip
    evidence = {
        "teacher": reference,
        "weight": cfg.distill,
        "temperature": TEMPERATURE,
        "images": len(targets),
        "teacher_right": right,
    }
    return logits, evidence


def _skip(why: str) -> tuple[None, dict[str, Any]]:
    log.info("distill: not done (%s)", why)
    return None, {"skipped": why}
