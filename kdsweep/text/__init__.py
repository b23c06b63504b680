"""Text classification: data (fortunes, Rotten Tomatoes, user files), BERT-family models,
the teacher store (fine-tune once, logits/features cached), IG attributions."""
