r"""ListOps (Long Range Arena): evaluate nested MIN/MAX/MED/SM expressions, 10 classes.

Launch (the data is generated when `data_path` is unset and size is small or tiny):

  python -m experiments.train --config=configs/listops.py:attention=longformer,size=small \
      --workdir=runs/listops_small_longformer
  python -m experiments.train --config=configs/listops.py:attention=full \
      --config.data_path=lra_release/lra_release/listops-1000 --workdir=runs/listops_paper

Arguments after the colon: attention=full|local|dilated|longformer, size=paper|small|tiny,
window=<one-sided window, 0 = the size's default>, dilation=<d or d/d/.../d per head>,
pretrain=none|mlm|causal (self-pretraining on the training inputs, then fine-tuning, in one
launch; none, the default, trains from scratch; `config.pretrain`, docs/self_pretraining.md).

size=paper is LRA's published setup (repo config `listops/configs/base_listops_config.py`,
which the paper's appendix matches): 4 layers, 512 wide, 8 heads, MLP 1024, batch 32, 5000
steps, peak learning rate 0.05/sqrt(1000) = 1.58e-3 after 1000 linear warmup steps, then
1/sqrt decay, weight decay 0.1, dropout 0.1, max length 2000, CLS pooling, sinusoidal
positions. Deviations: evaluation every 250 steps instead of 50 (it only picks the best
checkpoint); the window is 256 on each side (LRA's Longformer: 512 in total). LRA Table 1:
36.37% (Transformer), 35.63% (Longformer) test accuracy.

size=small trains in under 10 minutes on 2 CPU cores on the generated small split
(20k/1k/1k expressions of 100-512 tokens, depth 6); docs/results.md reports what it reaches.
"""

from configs import common
from configs.common import Preset


def get_config(arg=None):
  return common.classification_config(
      "listops", arg,
      presets={
          "paper": Preset(
              model=dict(num_layers=4, emb_dim=512, num_heads=8, mlp_dim=1024),
              max_length=2000, window=256, batch=32, steps=5000, warmup=1000,
              learning_rate=0.05 / 1000 ** 0.5, log_every=50, eval_every=250,
              checkpoint_every=500),
          "small": Preset(
              model=dict(num_layers=2, emb_dim=64, num_heads=4, mlp_dim=128), max_length=512,
              window=32, batch=32, steps=1100, warmup=150, learning_rate=3e-3, log_every=50,
              eval_every=200, checkpoint_every=200),
          "tiny": Preset(
              model=dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64), max_length=128,
              window=8, batch=8, steps=6, warmup=2, learning_rate=1e-3, log_every=1,
              eval_every=3, checkpoint_every=2),
      },
      generator_seed=0)  # seed of the generated dataset (data_path unset)
