"""`sweeps/decode.py --average SPEC`: decode chosen epochs' checkpoints of one speech trial and
their weight average (checkpoint ensembling), greedy and beam + LM, one table.

The members are the trial's `checkpoint_*` dirs whose weights' header names the epoch (every
checkpoint kdsweep writes); a trial trained with `keep_every=k` keeps every k-th epoch's besides
the best and the latest. The average is the uniform mean of the members' weights
(`kdsweep.averaging`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.averaging import check_spec, select_epochs
from kdsweep.errors import KDSweepError
from trainables.checkpointing import checkpoint_info


@dataclass(frozen=True)
class Member:
    epoch: int
    path: Path


def trial_dir_of(path: Path) -> Path:
    """The trial dir itself, or the trial dir of a checkpoint dir."""
    path = Path(path).expanduser().resolve()
    if (path / "model.safetensors").is_file():
        return path.parent
    if not path.is_dir():
        raise KDSweepError(f"checkpoint: {path} is not a trial or checkpoint directory")
    return path


def kept_checkpoints(trial_dir: Path) -> dict[int, Path]:
    """{epoch: checkpoint dir} of a trial (reads only the weights' headers); of two checkpoints
    of one epoch (a resumed trial) the later-named one."""
    found: dict[int, Path] = {}
    for path in sorted(Path(trial_dir).glob("checkpoint_*")):
        info = checkpoint_info(path) if (path / "config.json").is_file() else None
        if info is not None:
            found[int(info[0])] = path
    if not found:
        raise KDSweepError(f"checkpoint: no kdsweep checkpoint (checkpoint_*) in {trial_dir}")
    return found


def select_members(path: Path, spec: str) -> list[Member]:
    """The checkpoints `spec` ("70,75,80" or "last:3") picks from the trial at `path`."""
    check_spec(spec)
    kept = kept_checkpoints(trial_dir_of(path))
    return [Member(e, kept[e]) for e in select_epochs(spec, kept)]


def averaged_student(members: list[Member]):
    """The student whose weights are the uniform average of the members' weights."""
    from safetensors.torch import load_file

    from kdsweep.averaging import average_state_dicts
    from trainables.speech.eval import load_student

    states = [load_file(str(m.path / "model.safetensors")) for m in members]
    try:
        avg = average_state_dicts(states)
    except KDSweepError as e:
        raise KDSweepError(f"{members[0].path.parent}: {e}") from None
    model, _ = load_student(members[-1].path)
    model.load_state_dict(
        {k[len("student.") :]: v for k, v in avg.items() if k.startswith("student.")}
    )
    return model.eval()


def score_rows(
    members: list[Member], feats: dict[str, Any], splits: list[str], beam: Callable
) -> list[dict[str, Any]]:
    """One row per member and one for the average: {name, epochs, <split>_wer, _wer_beam, ...}.

    `beam(logits, refs)` -> {"wer", "cer"} with the chosen LM settings.
    """
    import torch

    from kdsweep.speech.teacher import greedy_scores, predict
    from trainables.speech.eval import load_student

    cpu = torch.device("cpu")
    models = [(f"epoch {m.epoch}", [m.epoch], lambda m=m: load_student(m.path)[0]) for m in members]
    epochs = [m.epoch for m in members]
    name = f"average({','.join(map(str, epochs))})"
    models.append((name, epochs, lambda: averaged_student(members)))
    rows = []
    print(header(splits), flush=True)
    for label, used, build in models:
        model, row = build(), {"name": label, "epochs": used}
        for split in splits:
            fs = feats[split]
            logits, _ = predict(model, fs, cpu)
            g, b = greedy_scores(logits, fs.transcripts), beam(logits, fs.transcripts)
            row.update({f"{split}_wer": g["wer"], f"{split}_cer": g["cer"]})
            row.update({f"{split}_wer_beam": b["wer"], f"{split}_cer_beam": b["cer"]})
        rows.append(row)
        print(format_row(row, splits), flush=True)
    return rows


def header(splits: list[str]) -> str:
    cols = "".join(f"  {s + ' greedy WER':>15}  {s + ' beam WER':>13}" for s in splits)
    return f"{'checkpoint':<24}{cols}"


def format_row(row: dict[str, Any], splits: list[str]) -> str:
    cols = "".join(f"  {row[f'{s}_wer']:>15.4f}  {row[f'{s}_wer_beam']:>13.4f}" for s in splits)
    return f"{row['name']:<24}{cols}"
