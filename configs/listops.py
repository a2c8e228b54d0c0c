r"""ListOps (Long Range Arena): evaluate nested MIN/MAX/MED/SM expressions, 10 classes.

Launch (the data is generated when `data_path` is unset and size is small or tiny):

  python -m experiments.train --config=configs/listops.py:attention=longformer,size=small \
      --workdir=runs/listops_small_longformer
  python -m experiments.train --config=configs/listops.py:attention=full \
      --config.data_path=lra_release/lra_release/listops-1000 --workdir=runs/listops_paper

Arguments after the colon: attention=full|local|dilated|longformer, size=paper|small|tiny,
window=<one-sided window, 0 = the size's default>, dilation=<d or d/d/.../d per head>.

size=paper is LRA's published setup (appendix; repo config `listops/configs/base_listops_
config.py`): 4 layers, 512 wide, 8 heads, MLP 1024, batch 32, 5000 steps, peak learning
rate 0.05/sqrt(1000) = 1.58e-3 with 1000 warmup steps then 1/sqrt decay, weight decay 0.1,
dropout 0.1, max length 2000, CLS pooling, sinusoidal positions. Deviations: evaluation
every 250 steps instead of 50 (it only picks the best checkpoint) and the window is 256 on
each side (LRA's Longformer: 512 in total). LRA Table 1 reports 36.37% (Transformer) and
35.63% (Longformer) test accuracy.

size=small trains in minutes on a CPU on the generated small split (lengths 100-512); see
the README for its measured accuracy.
"""

from lra import config_utils


def get_config(arg=None):
  args = config_utils.parse_arg(arg, attention="longformer", size="paper", window=0,
                                dilation=())
  config = config_utils.base_config("listops", args)
  sizes = {
      # layers, width, heads, mlp, window, batch, steps, warmup, peak lr, max length
      "paper": (4, 512, 8, 1024, 256, 32, 5000, 1000, 0.05 / 1000 ** 0.5, 2000),
      "small": (2, 64, 4, 128, 32, 32, 1500, 200, 2e-3, 512),
      "tiny": (1, 32, 2, 64, 8, 8, 6, 2, 1e-3, 128),
  }
  (layers, width, heads, mlp, window, batch, steps, warmup, lr,
   max_length) = sizes[args.size]

  config.data.max_length = max_length  # tokens kept per expression (LRA: 2000)
  config.data.generator_seed = 0  # seed of the generated dataset (data_path unset)

  config.model.kind = "classifier"
  config.model.num_layers = layers
  config.model.emb_dim = width
  config.model.num_heads = heads
  config.model.mlp_dim = mlp  # hidden width of the MLP blocks and of the head
  config.model.dropout_rate = 0.1 if args.size == "paper" else 0.0
  config.model.attention_dropout_rate = 0.1 if args.size == "paper" else 0.0
  config.model.pos_emb = "sinusoidal"  # sinusoidal | learned
  config.model.pooling = "cls"  # cls | mean
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = config_utils.attention_config(
      args.attention, window=args.window or window, num_heads=heads, dilation=args.dilation)

  config.batch_size = batch
  config.eval_batch_size = 2 * batch
  config.num_train_steps = steps
  config.log_every_steps = {"paper": 50, "small": 50, "tiny": 1}[args.size]
  config.eval_every_steps = {"paper": 250, "small": 250, "tiny": 3}[args.size]
  config.checkpoint_every_steps = {"paper": 500, "small": 250, "tiny": 2}[args.size]
  config.optimizer.learning_rate = lr
  config.optimizer.warmup_steps = warmup
  config.optimizer.weight_decay = 0.1 if args.size == "paper" else 0.01
  config.optimizer.grad_clip = 0.0 if args.size == "paper" else 1.0  # LRA: no clipping
  return config
