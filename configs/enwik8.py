r"""enwik8 character-level language modelling (Longformer §4): bits per character.

Launch (the file unzipped from http://mattmahoney.net/dc/enwik8.zip; split 90M/5M/5M):

  python -m experiments.train --config=configs/enwik8.py --config.data_path=enwik8 \
      --workdir=runs/enwik8
  # A CPU run of minutes on any text file (split 90/5/5), e.g. the Python documentation
  # sources from Debian's python3.11-doc package (see docs/decoding.md):
  python -m experiments.train --config=configs/enwik8.py:size=small \
      --config.data_path=data/python_docs.txt --config.data.format=text \
      --workdir=runs/charlm_small

Arguments after the colon: size=paper|small|tiny.

size=paper is the paper's small model (12 layers, 512 wide, 8 heads, 41M parameters in the
paper): causal windows growing with depth from 32 to 512 characters in phase 1, dilation on
2 heads of the 6 upper layers, 5 phases that double the sequence length (2048 -> 23040, as
the paper) and the windows and halve the learning rate (2.5e-4 -> 1.5625e-5), batch 32, 32,
16, 16, 16, 430K/50K/50K/35K/5K steps, warmup 10% of each phase (at most 10K), dropout 0.2,
weight decay 0.01, gradient clipping 0.25; evaluation on windows of 32,256 characters with
step 512, scoring the last 512. The paper gives dilations 0, 1, 2, 3 for layers 0-5, 6-7,
8-9, 10-11 without saying whether they are gaps or strides; read here as gaps, so strides
1, 2, 3, 4. Positions are rotary (relative, like the paper's Transformer-XL encoding but
multiplicative; see lra/models/lm.py). size=small is a CPU run of about 10 minutes (4 layers,
128 wide, 2 phases of 256 and 512 characters); size=tiny runs in seconds, for tests.
Expected (Longformer Table 2): 1.00 test BPC (dev 1.02).
"""

import ml_collections

from configs import common
from configs.common import Preset

# Character-level LM scales (Longformer §4 and App. B for `paper`: its small model).
# Windows are one-sided and causal (each position sees `w` earlier ones) and grow with depth;
# `layer_dilation` applies to the last `dilated_heads` heads of each layer (1 = none).
# The paper's phase-1 windows: 32 at the bottom to 512 at the top, geometric in between.
_PAPER_WINDOWS = tuple(round(32 * 16 ** (layer / 11)) for layer in range(12))
PRESETS = {
    "paper": Preset(
        model=dict(num_layers=12, emb_dim=512, num_heads=8, mlp_dim=2048,
                   windows=_PAPER_WINDOWS, layer_dilation=(1,) * 6 + (2, 2, 3, 3, 4, 4),
                   dilated_heads=2, dropout_rate=0.2),
        phases=dict(steps=(430_000, 50_000, 50_000, 35_000, 5_000),
                    seq_length=(2048, 4096, 8192, 16384, 23040),
                    batch_size=(32, 32, 16, 16, 16), window_scale=(1, 2, 4, 8, 16),
                    learning_rate=(2.5e-4, 1.25e-4, 6.25e-5, 3.125e-5, 1.5625e-5),
                    warmup_steps=(10_000, 5_000, 5_000, 3_500, 500)),
        # streaming: chunks at least the largest ring (8192 x 4 + 1 in phase 5), since a
        # chunk's window attention runs over its layer's ring and the chunk.
        evaluation=dict(length=32256, step=512, scored_length=512, max_chars=0, chunk=32768),
        eval_batch=4, log_every=100, eval_every=10_000, checkpoint_every=5_000),
    "small": Preset(
        model=dict(num_layers=4, emb_dim=128, num_heads=4, mlp_dim=512, windows=(16, 32, 48, 64),
                   layer_dilation=(1, 1, 2, 2), dilated_heads=1, dropout_rate=0.0),
        phases=dict(steps=(400, 150), seq_length=(256, 512), batch_size=(16, 8),
                    window_scale=(1, 2), learning_rate=(2e-3, 1e-3), warmup_steps=(40, 15)),
        evaluation=dict(length=512, step=256, scored_length=256, max_chars=100_000),
        eval_batch=32, log_every=25, eval_every=200, checkpoint_every=100),
    "tiny": Preset(
        model=dict(num_layers=2, emb_dim=32, num_heads=2, mlp_dim=64, windows=(4, 8),
                   layer_dilation=(1, 2), dilated_heads=1, dropout_rate=0.0),
        phases=dict(steps=(3, 3), seq_length=(16, 32), batch_size=(4, 2), window_scale=(1, 2),
                    learning_rate=(1e-3, 5e-4), warmup_steps=(1, 1)),
        evaluation=dict(length=32, step=16, scored_length=16, max_chars=400),
        eval_batch=4, log_every=1, eval_every=3, checkpoint_every=3),
}


def charlm_config(data_format: str, arg: str | None) -> ml_collections.ConfigDict:
  """A character-level LM config of `data_format` (enwik8 | text8 | text): `arg` takes
  size=paper|small|tiny."""
  args = common.parse_arg(arg, size="paper")
  config = common.base_config("charlm", args.size, PRESETS[args.size])
  del config["batch_size"]  # per phase: phases.batch_size
  config.data.format = data_format  # enwik8 | text8 | text (any file); all split 90/5/5

  config.model.kind = "causal_lm"
  # model.windows: one-sided causal window per layer (phase 1); model.layer_dilation: the
  # dilation per layer (1 = none), of its last model.dilated_heads heads.
  config.model.window_scale = 1  # multiplies the windows; set per phase by the trainer
  config.model.attention_dropout_rate = 0.0
  config.model.pos_emb = "rotary"  # relative positions, any length: see lra/models/lm.py
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = ml_collections.ConfigDict({"name": "local"})  # causal, per layer: model.*

  # Staged training: one entry per phase. Each phase trains `steps` steps on crops of
  # `seq_length` with `batch_size`, windows x `window_scale`, and `learning_rate` after a
  # linear warmup of `warmup_steps`.
  config.phases = ml_collections.ConfigDict(PRESETS[args.size].phases)
  config.num_train_steps = common.computed(sum, config.phases.get_ref("steps"), field_type=int)
  # Bits per character. protocol=strided: over windows of `length`, `step` apart, each
  # scoring its last `scored_length` predictions (the first window scores all), the paper's;
  # protocol=streaming: one pass through the rolling caches of the decoder, every character
  # predicted once from all the context its windows reach, in `streams` stretches side by
  # side, `chunk` characters per step (lra.generation). max_chars > 0 evaluates only the
  # first max_chars characters of a split.
  config.evaluation = ml_collections.ConfigDict(
      {"protocol": "strided", "streams": 8, "chunk": 512, **PRESETS[args.size].evaluation})

  config.optimizer.schedule = "phases"  # learning rates and warmups: config.phases
  del config.optimizer["learning_rate"], config.optimizer["warmup_steps"]
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip = 0.25
  return config


def get_config(arg=None):
  return charlm_config("enwik8", arg)
