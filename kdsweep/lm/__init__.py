"""Causal language-model distillation: corpus, teachers and students, divergences, caches."""
