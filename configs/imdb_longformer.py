r"""IMDb classification by fine-tuning a pretrained HuggingFace Longformer (Longformer §6).

Launch, with a downloaded checkpoint folder (`huggingface-cli download
allenai/longformer-base-4096 --local-dir longformer-base-4096`: config.json,
model.safetensors, vocab.json, merges.txt) and the unpacked IMDb download
(https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz):

  python -m experiments.train --config=configs/imdb_longformer.py \
      --config.init_from=longformer-base-4096 --config.data_path=aclImdb \
      --workdir=runs/imdb_longformer

Arguments: size=paper|small|tiny. `init_from` is required: the encoder starts from its
weights (model.kind `pretrained_longformer`, a fresh classification head) and the reviews
are tokenized with its vocab.json/merges.txt (RoBERTa's byte-level BPE, `lra.data.bpe`):
`<s> review </s>`, at most `data.max_length` ids, `<s>` the one global token; task ids
are the tokenizer's + 1, so that 0 stays padding.

size=paper follows the Longformer paper's text classification (Beltagy et al. 2020, App.
"Text classification"): reviews up to 4096 BPE tokens, a loss on the first token with
global attention on it, Adam with batch 32, learning rate 3e-5 (the best of its grid of
3e-5 and 5e-5) with linear warmup over the first 10% of the steps and linear decay, 15
epochs (the best of 10, 15, 20). IMDb accuracy in its Table 7: 95.7 (base). Not stated in
the paper, so taken from elsewhere: Adam's betas and epsilon are PyTorch's defaults, no
weight decay (the paper names plain Adam), gradient clipping at norm 1 (HF Trainer's
default), dropout as the checkpoint's config.json (0.1 for the published models).
Deviation: 'val' is 10% of the train reviews (seeded) and the test score is that of the
best validation checkpoint, so 15 epochs of the other 22500 are 10547 steps. Memory: a
batch of 32 x 4096 tokens of the base model needs recomputation
(`--config.model.remat=true`) and bfloat16 (`--config.model.dtype=bfloat16`) on one
accelerator, or several devices (the batch is split over them).

size=small runs on the CPU in minutes with a tiny random checkpoint such as the test
fixture `tests/fixtures/hf_longformer/tiny` (2 layers of 64, 64 positions, a 290-id BPE):
62 tokens per review, batch 8, 200 steps at 1e-3. It checks the pipeline, not accuracy.
size=tiny: a few steps, for tests.
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from configs.common import Preset

# max_length: BPE ids per review, <s> and </s> included. No model: the checkpoint's.
PRESETS = {
    # 15 epochs of 22500 train reviews: ceil(15 * 22500 / 32).
    "paper": Preset(max_length=4096, batch=32, steps=10547, learning_rate=3e-5, log_every=50,
                    eval_every=700, checkpoint_every=700),
    # 62 = the tiny fixture's 64 positions less RoBERTa's offset of pad_token_id + 1.
    "small": Preset(max_length=62, batch=8, steps=200, learning_rate=1e-3, log_every=10,
                    eval_every=50, checkpoint_every=50),
    "tiny": Preset(max_length=32, batch=4, steps=4, learning_rate=1e-3, log_every=1,
                   eval_every=2, checkpoint_every=2),
}


def get_config(arg=None):
  args = common.parse_arg(arg, size="paper")
  config = common.base_config("text", args.size, PRESETS[args.size])
  # The HuggingFace Longformer folder: config.json, model.safetensors, vocab.json,
  # merges.txt. Required.
  config.init_from = config_dict.placeholder(str)

  config.data.tokenizer = "bpe"  # bytes | bpe (lra/data/text.py)
  # vocab.json and merges.txt; follows init_from.
  config.data.tokenizer_path = config.get_ref("init_from").identity()
  config.data.val_fraction = 0.1  # share of the train reviews held out for validation

  config.model.kind = "pretrained_longformer"  # lra/models/longformer_classifier.py
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters float32)
  config.model.remat = False  # recompute each layer in the backward pass (less memory)
  # Windows come from the checkpoint; these options only choose how they are computed.
  config.attention = ml_collections.ConfigDict({
      "name": "longformer",
      "block_size": config_dict.placeholder(int),  # query block; None: from the window
      "implementation": config_dict.placeholder(str),  # xla | pallas; None: the backend's
  })

  config.optimizer.schedule = "linear"
  # 10% of the steps; follows num_train_steps.
  config.optimizer.warmup_steps = common.computed(
      lambda steps: round(0.1 * steps), config.get_ref("num_train_steps"), field_type=int)
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip = 1.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  return config
