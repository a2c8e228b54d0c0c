r"""Image (Long Range Arena): CIFAR-10 as sequences of 1024 grey pixels, 10 classes.

Launch (data: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked):

  python -m experiments.train --config=configs/image.py:attention=longformer \
      --config.data_path=cifar-10-batches-py --workdir=runs/image

Arguments: attention=full|local|dilated|longformer, size=paper|small|tiny, window=,
dilation=, pretrain=none|mlm|causal (see configs/listops.py).

size=paper follows LRA's CIFAR-10 Transformer (with the maintainers' fix of 8 heads, LRA
issue #33): 1 layer, 128 wide, 8 heads, MLP 128, batch 256, 35000 steps (200 epochs),
learning rate 5e-4 with 175 warmup steps and cosine decay, no weight decay, dropout 0.3,
attention dropout 0.2, learned positions, CLS pooling, 45k/5k/10k train/val/test. Pixel
value v is token v + 1: a black pixel is a real token, never padding (LRA masked pixel 0).
LRA Table 1: 42.44% (Transformer), 42.22% (Longformer).
"""

from configs import common
from configs.common import Preset


def get_config(arg=None):
  return common.classification_config(
      "image", arg, pos_emb="learned", schedule="cosine", weight_decay=0.0,
      dropout_rate=0.3, attention_dropout_rate=0.2,
      presets={
          "paper": Preset(
              model=dict(num_layers=1, emb_dim=128, num_heads=8, mlp_dim=128), max_length=1024,
              window=256, batch=256, steps=35000, warmup=175, learning_rate=5e-4,
              log_every=100, eval_every=175, checkpoint_every=1750),
          "small": Preset(
              model=dict(num_layers=1, emb_dim=64, num_heads=4, mlp_dim=128), max_length=1024,
              window=64, batch=64, steps=1000, warmup=100, learning_rate=1e-3, log_every=50,
              eval_every=200, checkpoint_every=200),
          "tiny": Preset(
              model=dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64), max_length=1024,
              window=8, batch=8, steps=4, warmup=2, learning_rate=1e-3, log_every=1,
              eval_every=2, checkpoint_every=2),
      },
      val_fraction=0.1)  # share of the 50k train images held out for validation
