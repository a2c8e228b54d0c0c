r"""Retrieval (Long Range Arena): do two AAN papers cite each other? Bytes, dual encoder.

Launch (data: the LRA release lra_release.gz, folder lra_release/lra_release/tsv_data with
new_aan_pairs.{train,eval,test}.tsv):

  python -m experiments.train --config=configs/retrieval.py:attention=longformer \
      --config.data_path=lra_release/lra_release/tsv_data --workdir=runs/retrieval

Arguments: attention=full|local|dilated|longformer, size=paper|small|tiny, window=,
dilation=, pretrain=none|mlm|causal (see configs/listops.py).

size=paper follows LRA: a dual encoder with shared weights, 4 layers, 128 wide, 4 heads,
MLP 512, 4000 bytes per document, batch 32, 5000 steps, learning rate 0.05 x warmup(8000)
x rsqrt (the warmup is longer than training, so the rate ends at 3.5e-4), weight decay 0.1,
dropout 0.1, CLS pooling, the paper's [e1, e2, e1*e2, e1-e2] head (the public LRA code
concatenated only [e1, e2] and its retrieval trainer has been broken since 2021). LRA
Table 1: 57.46% (Transformer), 56.89% (Longformer).
"""

from configs import common
from configs.common import Preset


def get_config(arg=None):
  return common.classification_config(
      "retrieval", arg, kind="dual_encoder",
      presets={
          "paper": Preset(
              model=dict(num_layers=4, emb_dim=128, num_heads=4, mlp_dim=512), max_length=4000,
              window=256, batch=32, steps=5000, warmup=8000,
              learning_rate=0.05 / 8000 ** 0.5, log_every=100, eval_every=500,
              checkpoint_every=500),
          "small": common.BYTE_TASK_SMALL,
          "tiny": common.BYTE_TASK_TINY,
      })
