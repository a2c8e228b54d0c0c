"""Token-id conventions shared by the datasets and the models, which import nothing of each
other: every task's arrays are right-padded with `PAD_ID`, and the models mask it out."""

PAD_ID = 0
# A pretrained tokenizer's ids (RoBERTa's byte-level BPE: `<s>` 0, `<pad>` 1, `</s>` 2) are
# shifted up by this in the task arrays, so that id 0 stays `PAD_ID`: task id = tokenizer
# id + PRETRAINED_ID_SHIFT. Models of a pretrained checkpoint subtract it again.
PRETRAINED_ID_SHIFT = 1
