"""Token-id conventions shared by the datasets and the models, which import nothing of each
other: every task's arrays are right-padded with `PAD_ID`, and the models mask it out."""

PAD_ID = 0
