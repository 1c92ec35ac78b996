"""Freezing strategies on tiny models of three architectures (no training)."""

# --8<-- [start:strategies]
from finetune_lib import LayerFreezer
from finetune_lib.freezing import find_parts, freeze
from finetune_lib.testing import tiny_model

bert = tiny_model("bert", task="classification")        # 4 blocks
print(LayerFreezer(train_last=2).apply(bert))           # the table: part, module, trainable, frozen

freeze(bert, freeze_first=1)                             # the same rules as a plain function
freeze(bert, train_fraction=0.5, freeze_embeddings=False)
freeze(bert, include=["*attention*"])                    # only attention weights (plus the head)
freeze(bert, train_last=2, exclude=[r"LayerNorm"])       # ...but never the LayerNorms

t5 = tiny_model("t5", task="seq2seq")                    # encoder blocks first, then decoder blocks
print([b.name for b in find_parts(t5).blocks][-2:])      # the top decoder blocks
summary = LayerFreezer(train_last=2, lr_decay=0.8).apply(tiny_model("gpt2", task="causal_lm"))
print(summary)                                           # with the learning-rate scale per part
# --8<-- [end:strategies]
assert [b.name for b in find_parts(t5).blocks][-1] == "decoder.block.3"
