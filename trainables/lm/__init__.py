"""Causal-LM distillation conditions."""
