r"""Text (Long Range Arena): IMDb sentiment from raw bytes, 2 classes.

Launch (data: https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, unpacked):

  python -m experiments.train --config=configs/text.py:attention=longformer \
      --config.data_path=aclImdb --workdir=runs/text

Arguments: attention=full|local|dilated|longformer, size=paper|small|tiny, window=,
dilation=, pretrain=none|mlm|causal (see configs/listops.py).

size=paper follows the LRA paper's appendix: 6 layers, 512 wide, 8 heads, MLP 2048, bytes
up to 4000, batch 32, 20000 steps, peak learning rate 0.05/sqrt(8000) = 5.6e-4 after 8000
warmup steps then 1/sqrt decay, weight decay 0.1, dropout 0.1, CLS pooling. Deviation: the
validation split is 10% of the train reviews (seeded), not the test set as in LRA, so the
best checkpoint is chosen without looking at test. LRA Table 1: 64.27% (Transformer),
62.85% (Longformer).
"""

from configs import common
from configs.common import Preset


def get_config(arg=None):
  return common.classification_config(
      "text", arg,
      presets={
          "paper": Preset(
              model=dict(num_layers=6, emb_dim=512, num_heads=8, mlp_dim=2048), max_length=4000,
              window=256, batch=32, steps=20000, warmup=8000,
              learning_rate=0.05 / 8000 ** 0.5, log_every=100, eval_every=1000,
              checkpoint_every=1000),
          "small": common.BYTE_TASK_SMALL,
          "tiny": common.BYTE_TASK_TINY,
      },
      val_fraction=0.1)  # share of the train reviews held out for validation
