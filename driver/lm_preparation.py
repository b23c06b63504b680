"""Driver-side preparation of an LM sweep: the teacher materialised and its top-k cache (and
seqkd continuations) built once before any trial; the log line and MLflow tags describing them."""

from __future__ import annotations

from typing import Any

from trainables.lm.loop import prepare_lm


def prepare_lm_sweep(cfg: Any, log: Any) -> dict[str, Any]:
    """What `driver.preparation.prepare` runs for task `lm` (once per condition: cache hits
    after the first)."""
    data = prepare_lm(cfg, log)
    t, c = data.teacher, data.cache
    how = "reused from" if data.teacher_hit else "stored in"
    built = "reused" if data.cache_hit else f"built in {c.meta.get('seconds', 0):.0f} s"
    full = 2 * int(t.meta.get("vocab", 0))
    log(
        f"[kdsweep] teacher {t.id} ({t.meta.get('source')}, {t.meta.get('architecture')}, "
        f"{t.meta.get('layers')} layers, {t.meta.get('params', 0) / 1e6:.1f}M params) {how} "
        f"the LM teacher store; top-{c.meta['k']} cache {c.id} {built}: "
        f"{c.bytes_per_token:.0f} bytes/token vs {full} for fp16 logits; teacher dev perplexity "
        f"{c.meta.get('teacher_dev_perplexity', float('nan')):.2f}; blocks of {cfg.block_size} "
        + "/".join(str(len(data.blocks[s])) for s in ("train", "dev", "test"))
        + " (train/dev/test)"
    )
    tags = {
        "teacher_id": t.id,
        "teacher": cfg.teacher,
        "topk_cache_id": c.id,
        "cache_bytes_per_token": f"{c.bytes_per_token:.0f}",
        "full_logits_bytes_per_token": str(full),
        "teacher_dev_perplexity": f"{c.meta.get('teacher_dev_perplexity', float('nan')):.4f}",
        # the cache's teacher seconds, amortised over its trials by the report
        "teacher_train_seconds": f"{float(c.meta.get('seconds', 0.0)):.1f}",
        "dev_examples": str(len(data.blocks["dev"])),
    }
    return {"tags": tags, "teacher_hit": data.teacher_hit and data.cache_hit}
