r"""enwik8 character-level language modelling (Longformer §4): bits per character.

Launch (the file unzipped from http://mattmahoney.net/dc/enwik8.zip; split 90M/5M/5M):

  python -m experiments.train --config=configs/enwik8.py --config.data_path=enwik8 \
      --workdir=runs/enwik8
  # A CPU run of minutes on any text file (split 90/5/5), e.g. the Python documentation
  # sources from Debian's python3.11-doc package (see docs/results.md):
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

from lra import config_utils


def get_config(arg=None):
  return config_utils.charlm_config("enwik8", arg)
