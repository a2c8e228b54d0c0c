r"""text8 character-level language modelling (Longformer §4): bits per character.

Launch (the file unzipped from http://mattmahoney.net/dc/text8.zip; split 90M/5M/5M):

  python -m experiments.train --config=configs/text8.py --config.data_path=text8 \
      --workdir=runs/text8

Arguments after the colon: size=paper|small|tiny. The model, phases, evaluation and their
deviations from the paper are those of configs/enwik8.py (the paper trains the same small
model on both). Expected (Longformer Table 2): 1.10 test BPC (dev 1.04).
"""

from configs import enwik8


def get_config(arg=None):
  return enwik8.charlm_config("text8", arg)
