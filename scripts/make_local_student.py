"""Build a small DistilBERT-architecture classifier with its own WordPiece tokenizer, offline.

    python scripts/make_local_student.py runs/local-distilbert [--dataset fortunes] [--dim 128]
    python sweeps/pretrained.py --seeds 3 student=runs/local-distilbert

The tokenizer is trained with the `tokenizers` library on the dataset's training texts, so its
vocabulary differs from the teacher's (a cross-tokenizer student); the weights are random (there
is no pretraining here: this builds a stand-in for a hub model when there is no internet, and a
template for converting one's own model). The directory is what `from_pretrained` reads:
config.json, model.safetensors, tokenizer files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing


def train_wordpiece(texts: list[str], vocab_size: int):
    """A lowercasing BERT-style WordPiece tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                             special_tokens=special))  # fmt: skip
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dataset", default="fortunes", help="a text dataset kdsweep reads")
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from kdsweep.text.data import load_text_dataset
    from trainables.text.config import TextConfig

    splits = load_text_dataset(TextConfig.from_dict({"dataset": args.dataset}).data_spec())
    tok = train_wordpiece([t for t, _ in splits.train], args.vocab_size)
    torch.manual_seed(args.seed)
    cfg = DistilBertConfig(
        vocab_size=len(tok), dim=args.dim, n_layers=args.layers, n_heads=max(1, args.dim // 64),
        hidden_dim=4 * args.dim, num_labels=len(splits.label_names),
        id2label=dict(enumerate(splits.label_names)), pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    DistilBertForSequenceClassification(cfg).save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved {args.out}: DistilBERT {args.layers}L-{args.dim}H, own WordPiece vocab "
          f"{len(tok)} ({args.dataset} train texts), {len(splits.label_names)} labels")  # fmt: skip
    return args.out


if __name__ == "__main__":
    main()
