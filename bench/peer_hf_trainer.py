"""Peer: Hugging Face Trainer + Ray Tune (what a user writes from the research note) vs kdsweep.

    python bench/peer_hf_trainer.py [--quick] [--epochs E]

The peer is the standard recipe: a `DistillationTrainingArguments` subclass carrying alpha and
temperature, a `DistillationTrainer(Trainer)` whose `compute_loss` runs the teacher forward on
every batch (alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE), and
`trainer.hyperparameter_search(backend="ray", hp_space=T in {1, 2, 4, 8}, n_trials=1)`, one
CPU per trial (2 at a time on 2 cores). It gets the same data (kdsweep's tokens, padded per batch
to the longest sequence like DataCollatorWithPadding), the same fine-tuned teacher (from the
teacher store: fine-tuning is excluded on both sides), the same randomly initialized L2-H128
student, lr, batch size, warm-up/linear decay, grad clipping and epochs (640 training examples).

kdsweep: `python sweeps/temperature.py --no-asha --no-test --cpus-per-trial 1` with the same
settings (every trial to the last epoch, like the peer).

Each side runs as its own process, timed start to exit, interleaved (the order alternates per
round). Ratio = peer wall / kdsweep wall; goal >= 2x, at the same best dev accuracy (both best
dev accuracies, max over trials and epochs, are reported).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = (">=", 2.0)
TEMPS = [1.0, 2.0, 4.0, 8.0]


# ---------------------------------------------------------------- the peer (a user's script)
def make_trainer(cfg: dict[str, Any], out_dir: Path):
    """The research note's DistillationTrainer on kdsweep's data, teacher and student."""
    from dataclasses import dataclass, field

    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, Trainer, TrainingArguments

    from kdsweep.text.models import build_student
    from trainables.text.config import TextConfig
    from trainables.text.loop import prepare_text

    # Same data and teacher as kdsweep (tokens + the fine-tuned teacher from its store).
    tcfg = TextConfig.from_dict(common.config_fields(cfg, "independent"))
    data = prepare_text(tcfg, log=lambda m: None)
    teacher = data.teacher.load_model()
    teacher_config = AutoConfig.from_pretrained(data.teacher.model_dir)
    num_labels = data.splits.num_labels
    keys = ("input_ids", "attention_mask", "labels")

    class Split(torch.utils.data.Dataset):
        def __init__(self, tokens: dict, n: int = 0):
            self.t = {k: tokens[k][:n] if n else tokens[k] for k in keys}

        def __len__(self) -> int:
            return len(self.t["labels"])

        def __getitem__(self, i: int) -> dict:
            return {k: v[i] for k, v in self.t.items()}

    def collate(rows: list[dict]) -> dict:  # pad to the longest in the batch
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        longest = int(batch["attention_mask"].sum(1).max())
        return {
            "input_ids": batch["input_ids"][:, :longest].long(),
            "attention_mask": batch["attention_mask"][:, :longest].long(),
            "labels": batch["labels"].long(),
        }

    @dataclass
    class DistillationTrainingArguments(TrainingArguments):
        alpha: float = field(default=0.5)
        temperature: float = field(default=2.0)

    class DistillationTrainer(Trainer):
        def __init__(self, *args, teacher_model=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher_model.eval()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs_student = model(**inputs)
            student_loss = outputs_student.loss
            self.teacher.to(model.device)
            with torch.no_grad():
                outputs_teacher = self.teacher(**inputs)
            t = self.args.temperature
            loss_kd = F.kl_div(
                F.log_softmax(outputs_student.logits / t, dim=-1),
                F.softmax(outputs_teacher.logits / t, dim=-1),
                reduction="batchmean",
            ) * (t**2)
            loss = self.args.alpha * loss_kd + (1.0 - self.args.alpha) * student_loss
            return (loss, outputs_student) if return_outputs else loss

    def model_init(trial=None):
        return build_student(cfg["student"], teacher_config, num_labels, init="random", dropout=0.1)

    def compute_metrics(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    args = DistillationTrainingArguments(
        output_dir=str(out_dir / "hf"),
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=128,
        learning_rate=cfg["lr"],
        weight_decay=0.01,
        warmup_steps=0.1,  # a ratio: 10% of the steps, like kdsweep's warmup_ratio
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=cfg.get("seed", 0),
        alpha=cfg["alpha"],
        temperature=cfg["temperature"],
    )
    return DistillationTrainer(
        model_init=model_init,
        args=args,
        train_dataset=Split(data.tokens["train"], cfg.get("data_subset", 0)),
        eval_dataset=Split(data.tokens["dev"], cfg.get("eval_subset", 0)),
        data_collator=collate,
        compute_metrics=compute_metrics,
        teacher_model=teacher,
    )


def peer_main(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """trainer.hyperparameter_search(backend="ray") over T in {1, 2, 4, 8}, 1 CPU per trial."""
    import ray
    from ray import tune

    trainer = make_trainer(cfg, out_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    best_run = trainer.hyperparameter_search(
        hp_space=lambda _: {"temperature": tune.grid_search(TEMPS)},
        backend="ray",
        n_trials=1,
        direction="maximize",
        compute_objective=lambda m: m["eval_accuracy"],
        resources_per_trial={"cpu": 1},
        storage_path=str(out_dir / "ray_results"),
        verbose=0,
    )
    analysis = best_run.run_summary
    errors = [t for t in analysis.trials if t.status == "ERROR"]
    if errors:
        raise RuntimeError(f"peer: {len(errors)} trial(s) failed")
    best, best_t, epochs = -1.0, None, 0
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is None or "objective" not in df:
            continue
        epochs += len(df)
        if df["objective"].max() > best:
            best, best_t = float(df["objective"].max()), trial.config.get("temperature")
    return {"best": best, "best_temperature": best_t, "epochs": epochs}


# ---------------------------------------------------------------- the benchmark
def run_peer(cfg: dict[str, Any], work: Path, tag: str) -> tuple[float, dict]:
    out = work / f"peer-{tag}"
    out.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", json.dumps(cfg), str(out)]
    wall = common.run_logged(cmd, work / f"peer-{tag}.log", work)
    return wall, json.loads((out / "result.json").read_text())


def run_kdsweep(cfg: dict[str, Any], work: Path, tag: str) -> tuple[float, dict]:
    name = f"kdsweep-{tag}"
    flags = ["--no-asha", "--no-test", "--cpus-per-trial", "1"]
    cmd = common.sweep_command("temperature", cfg, work, name, *flags)
    wall = common.run_logged(cmd, work / f"{name}.log", work)
    trials = common.read_trials(work / "runs" / name)
    best = max(trials, key=lambda t: float(t["dev_accuracy"]))
    return wall, {
        "best": float(best["dev_accuracy"]),
        "best_temperature": best.get("temperature"),
        "epochs": sum(int(t["epochs"]) for t in trials),
    }


def run(quick: bool = False, rounds: int | None = None, epochs: int | None = None) -> list:
    rounds = rounds or 1
    # 640 training examples (dev stays whole): the peer's teacher forwards dominate the budget
    cfg = common.base_config(quick, **({} if quick else {"data_subset": 640}))
    cfg.update({"epochs": epochs} if epochs else {})
    common.ensure_teacher(quick)
    work = common.bench_dir("peer_hf_trainer")
    print(
        f"peer_hf_trainer: 4 soft-KD trials (T {TEMPS}) x {cfg['epochs']} epochs, 2 slots, "
        f"{cfg.get('data_subset') or 'all'} train examples, {rounds} round(s)"
    )
    ratios, got_all = [], {"peer": [], "kdsweep": []}
    for i in range(rounds):
        order = ["kdsweep", "peer"] if i % 2 == 0 else ["peer", "kdsweep"]
        got = {}
        for side in order:
            fn = run_peer if side == "peer" else run_kdsweep
            got[side] = fn(cfg, work, str(i))
            got_all[side].append(got[side])
        ratios.append(got["peer"][0] / got["kdsweep"][0])
        print(
            f"  round {i + 1}: wall s kdsweep {got['kdsweep'][0]:.1f} "
            f"(best dev {got['kdsweep'][1]['best']:.4f}, {got['kdsweep'][1]['epochs']} epochs), "
            f"peer {got['peer'][0]:.1f} (best dev {got['peer'][1]['best']:.4f}, "
            f"{got['peer'][1]['epochs']} epochs) -> peer/kdsweep {ratios[-1]:.2f}"
        )
    r = common.median(ratios)
    kb = common.median([x[1]["best"] for x in got_all["kdsweep"]])
    pb = common.median([x[1]["best"] for x in got_all["peer"]])
    return [
        common.Result(
            "peer_hf_trainer",
            "HF Trainer+Ray Tune peer / kdsweep, wall",
            r,
            f"{GOAL[0]} {GOAL[1]:.1f}x",
            common.check(r, *GOAL),
            f"best dev accuracy kdsweep {kb:.4f}, peer {pb:.4f}; walls (s) kdsweep "
            f"{common.median([x[0] for x in got_all['kdsweep']]):.0f}, peer "
            f"{common.median([x[0] for x in got_all['peer']]):.0f}",
        )
    ]


def main(argv: list[str] | None = None) -> list | None:
    common.setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--peer"]:
        out = Path(argv[2])
        res = peer_main(json.loads(argv[1]), out)
        (out / "result.json").write_text(json.dumps(res))
        print("peer result", res)
        return None
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, help="interleaved repeats (default 1)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 3, quick 2)")
    args = p.parse_args(argv)
    results = run(args.quick, args.rounds, args.epochs)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
