"""GPU packing by memory, driver side: after preparation, before Ray starts.

    res = fit_gpu_share(plan, res)   # res["gpu"]: "auto" -> a share; a share: checked

On a local Ray with a visible GPU and no `--gpus-per-trial` (nor `resources: gpu` in the YAML),
the share is `auto`: trials share the card by memory, said in one line (`--gpus-per-trial 0`
keeps them on the CPU). The card is first checked against the torch build (kernels for its
compute capability, native bf16 when asked for). Then one trial's peak GPU memory is measured
by a short probe of every condition of the sweep at its heaviest shapes (the largest
batch_size, max_len and student), the maximum taken; all of it in a child process, so the
driver never holds a CUDA context. `auto` runs as many trials at a time as fit
(`kdsweep.gpu.plan_packing`); an explicit share that cannot fit is a KDSweepError before any
trial (`check_share`).
"""

from __future__ import annotations

import os
from typing import Any

from driver.dists import representative_values
from driver.plan import SweepPlan
from driver.space import SweepSpace
from kdsweep.gpu import (
    check_cuda_build,
    check_share,
    device_memory,
    gib,
    plan_packing,
    run_isolated,
)

# Dimensions whose largest value is the most memory a trial needs.
LARGEST = ("batch_size", "max_len", "hidden", "layers", "n_utterances")
LARGEST += ("block_size", "student_layers", "topk", "new_tokens")  # lm


def fit_gpu_share(plan: SweepPlan, res: dict[str, Any]) -> dict[str, float]:
    """`res` with the GPU share measured (`auto`) or checked (an explicit share)."""
    gpu = res["gpu"]
    if plan.address:
        return {**res, "gpu": float(gpu)}
    space = plan.space
    if gpu == 0 and default_auto(plan):
        print(
            "[kdsweep] a GPU is visible and no --gpus-per-trial was given: trials share it by "
            "memory (--gpus-per-trial auto; 0 keeps them on the CPU)"
        )
        gpu = "auto"
    if gpu == 0:
        say_unusable_gpu()
        return {**res, "gpu": 0.0}
    peak, free, total = measure(probe_configs(space), precisions(space))
    if gpu == "auto":
        cap = max_trials(plan, res["cpu"])
        packing = plan_packing(peak, free, total, max_trials=cap)
        print(f"[kdsweep] {packing.message}: --gpus-per-trial {packing.share:g}")
        return {**res, "gpu": packing.share}
    n = check_share(float(gpu), peak, total, free)
    print(f"[kdsweep] {n} trial(s) x {gib(peak)} fit the card at --gpus-per-trial {gpu:g}")
    return {**res, "gpu": float(gpu)}


def default_auto(plan: SweepPlan) -> bool:
    """No share given anywhere (the plan has no source for `gpu`), trials may use a GPU
    (`device` is not cpu), and one is visible (counted without creating a CUDA context)."""
    if "gpu" in plan.sources:
        return False
    if plan.space.fixed.get("device", "auto") == "cpu":
        return False
    import torch

    return torch.cuda.device_count() > 0


def say_unusable_gpu() -> None:
    """One line when nvidia-smi sees a card that torch cannot use (a driver older than the
    torch build's CUDA): the trials run on the CPU, said instead of silent."""
    import torch

    if torch.cuda.device_count() == 0 and (line := check_cuda_build()):
        print(f"[kdsweep] {line}")


def precisions(space: SweepSpace) -> list[str]:
    """Every `precision` a trial of the space may train at."""
    if "precision" in space.dists:
        return [str(p) for p in space.dists["precision"][1]]
    return [str(space.fixed.get("precision", "fp32"))]


def measure(configs: list[dict[str, Any]], precisions: list[str]) -> tuple[int, int, int]:
    """(peak bytes of the heaviest trial, free bytes, total bytes) of GPU 0, each in a child
    process: the card is checked and every config probed in one, the free memory is read in
    another after the first (and its memory) is gone."""
    from trainables.probe import check_and_probe

    line, peaks = run_isolated(check_and_probe, configs, precisions)
    if line:
        print(f"[kdsweep] {line}")
    for config, peak in zip(configs, peaks, strict=True):
        print(f"[kdsweep] memory probe: {config['condition']} needs {gib(peak)}")
    free, total = run_isolated(device_memory, "cuda:0")
    return int(max(peaks)), int(free), int(total)


def probe_configs(space: SweepSpace) -> list[dict[str, Any]]:
    """One trial config per condition of the space, each at the space's heaviest shapes (the
    largest batch_size, max_len, ..., the student with the most parameters): the probe takes
    the maximum over them (conditions differ in what they keep alive: attention maps, hidden
    states and their projections, teacher tensors)."""
    cfg: dict[str, Any] = dict(space.fixed)
    for key, (kind, args) in space.dists.items():
        values = representative_values(kind, args)
        if key in LARGEST:
            cfg[key] = max(values)
        elif key == "student":
            lm = space.task == "lm"
            count = lm_student_parameters if lm else student_parameters
            teacher = str(cfg.get("teacher") or ("smollm2" if lm else "minilm"))
            cfg[key] = max(values, key=lambda s: count(str(s), teacher))
        else:
            cfg[key] = values[0]
    if space.dists.get("batch_size", ("", []))[0] == "randint":
        cfg["batch_size"] = int(cfg["batch_size"])
    out = []
    for cond in space.conditions:
        names = space.config_class(cond).field_names()
        out.append({**{k: v for k, v in cfg.items() if k in names}, "task": space.task,
                    "condition": cond})  # fmt: skip
    return out


def student_parameters(student: str, teacher: str = "minilm") -> int:
    """Parameters of a text student, counted from its config on the meta device (no weights
    read): a shape `L<n>-H<h>` on the teacher's vocabulary, or a pretrained model (a
    directory, `shipped:minilm` or a hub name)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    from kdsweep.text.models import is_shape, parse_size, resolve_backbone, resolve_student

    if is_shape(student):
        layers, hidden, heads = parse_size(student)
        vocab = AutoConfig.from_pretrained(resolve_backbone(teacher)).vocab_size
        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * hidden)  # fmt: skip
    else:
        config = AutoConfig.from_pretrained(resolve_student(student))
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


def lm_student_parameters(student: str, teacher: str = "smollm2") -> int:
    """Parameters of a causal-LM student, counted from its config on the meta device: a shape
    in the teacher's architecture and vocabulary, or a pretrained model (folder / hub name)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdsweep.lm.models import is_shape, load_teacher_config, resolve_teacher, shape_config

    if is_shape(student):
        config = shape_config(student, load_teacher_config(resolve_teacher(teacher)))
    else:
        config = AutoConfig.from_pretrained(student)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def max_trials(plan: SweepPlan, cpu: float) -> int:
    """At most as many trials at a time as the sweep has (`plan.n_trials`), and the CPUs allow."""
    return max(1, min(plan.n_trials, int((os.cpu_count() or 1) // cpu)))
