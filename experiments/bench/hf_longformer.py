r"""Times HuggingFace's Longformer attention core, forward + backward, on the CPU.

What is measured: `LongformerSelfAttention` (`transformers.models.longformer`) with its six
projections replaced by identities, so that only the attention core is timed: the banded
query-key product, the padding mask, the softmax, the banded probabilities-value product,
and their backward. The setup matches the project's JAX benchmark: batch 1, 8 heads of 64,
one-sided window 256, no global tokens, float32, dropout 0; one step is the forward and
`output.backward(g)` for a fixed random output gradient `g` into the input hidden states.

HF's `attention_window` is the TOTAL window, twice the one-sided one, and the bare layer
asserts that the length is a multiple of it (`LongformerModel` pads first), so every length
must be a multiple of 2 * `--window`.

Each length runs in a fresh child process, so that its peak RSS (which includes the
interpreter, torch and transformers) is its own; `base_rss_gb` is its RSS after setup,
before the first step. GB are 10**9 bytes.

torch and transformers are no dependency of the project, and this script imports neither
jax nor `lra` (only `experiments.bench.harness`, which needs neither). Install them in a
scratch virtual environment and run it from the repository root:

  python3 -m venv /tmp/hfvenv && \
    /tmp/hfvenv/bin/pip install torch==2.13.0 transformers==5.24.0 psutil
  /tmp/hfvenv/bin/python -m experiments.bench.hf_longformer \
    --lengths=1024,4096 --repeats=3 --out=results/hf_longformer.json

It prints the median seconds per step of each length and, with `--out`, writes a JSON list
of {"length", "median_s", "times_s", "peak_rss_gb", "base_rss_gb"}.

With `--model`, the whole `LongformerModel` is timed instead (what
`experiments.bench.pretrained` runs beside the project's model): random weights of
`--layers` layers of `--heads` x `--head_dim` (MLP 4x wider, vocabulary 50265, 4098
positions, as `allenai/longformer-base-4096`), `--global_tokens` leading global tokens, eval
mode, and one step is the forward and the backward of `sum(last_hidden_state * g)` into every
parameter (`--remat`: HF's gradient checkpointing of every layer). The model pads, so lengths
need not be multiples of the window.
"""

import argparse
import os
import sys

import torch
import transformers
from transformers.models.longformer import modeling_longformer

from experiments.bench import harness

_PROJECTIONS = ("query", "key", "value", "query_global", "key_global", "value_global")


class _FreshIdentity(torch.nn.Identity):
  """An identity that returns a new tensor instead of its input.

  HF scales the query in place (`query_vectors /= sqrt(head_dim)`). With a plain
  `Identity` the query is a view of the input, a leaf that requires grad, and
  autograd refuses the in-place op; on a non-leaf input it would also scale the
  key and the value, which alias the same storage. A real `nn.Linear` returns a
  fresh tensor, so a copy keeps HF's semantics; it costs one copy of the input
  (8 MB at length 4096), small next to the attention itself.
  """

  def forward(self, x):
    return x.clone()


def _build_layer(args):
  """HF's self-attention layer with identity projections, in eval mode."""
  config = transformers.LongformerConfig(
      hidden_size=args.heads * args.head_dim, num_attention_heads=args.heads,
      # HF's window is the total width; the layer halves it to the one-sided one.
      attention_window=[2 * args.window], attention_probs_dropout_prob=0.0)
  layer = modeling_longformer.LongformerSelfAttention(config, layer_id=0)
  for name in _PROJECTIONS:
    setattr(layer, name, torch.nn.Identity())
  # Only the query is modified in place by HF; see _FreshIdentity.
  layer.query = _FreshIdentity()
  # eval() turns dropout off outright; autograd still runs (only torch.no_grad() stops it).
  return layer.eval()


def _layer_step(args, length):
  """Forward + backward of the attention core on random hidden states."""
  layer = _build_layer(args)
  hidden = args.heads * args.head_dim
  x = torch.randn(1, length, hidden, requires_grad=True)
  cotangent = torch.randn(1, length, hidden)
  # LongformerModel hands its layers a 2-D float mask of -10000-like (masked), 0 (local) or
  # +large (global) values, and derives the other arguments from it once per forward
  # (LongformerEncoder.forward). All zeros: every token local, none padding, none global.
  attention_mask = torch.zeros(1, length)
  masks = dict(is_index_masked=attention_mask < 0, is_index_global_attn=attention_mask > 0,
               # A Python bool, as HF computes it with .item(); False skips the global paths.
               is_global_attn=False)

  def step():
    x.grad = None
    layer(x, attention_mask=attention_mask, **masks)[0].backward(cotangent)

  return step


def _model_step(args, length):
  """Forward + backward of the whole LongformerModel into every parameter."""
  config = transformers.LongformerConfig(
      vocab_size=50265, max_position_embeddings=4098, type_vocab_size=1,
      hidden_size=args.heads * args.head_dim, num_attention_heads=args.heads,
      intermediate_size=4 * args.heads * args.head_dim, num_hidden_layers=args.layers,
      attention_window=[2 * args.window] * args.layers, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = transformers.LongformerModel(config).eval()
  if args.remat:
    # HF checkpoints its layers only in training mode; dropout is 0, so train() changes
    # nothing else.
    model.gradient_checkpointing_enable()
    model.train()
  input_ids = torch.randint(3, config.vocab_size, (1, length))
  global_attention_mask = torch.zeros(1, length, dtype=torch.long)
  global_attention_mask[:, :args.global_tokens] = 1
  cotangent = torch.randn(1, length, config.hidden_size)

  def step():
    model.zero_grad(set_to_none=True)
    out = model(input_ids, global_attention_mask=global_attention_mask).last_hidden_state
    out.backward(cotangent)

  return step


def _measure_one_length(args, length):
  """Times one length in this process; returns its record."""
  torch.manual_seed(0)
  step = (_model_step if args.model else _layer_step)(args, length)
  base_rss_gb = harness.rss_gb()
  timing = harness.time_calls(step, args.warmup, args.repeats)
  return {"length": length, "median_s": timing["median_s"], "times_s": timing["times_s"],
          "peak_rss_gb": harness.peak_rss_gb(), "base_rss_gb": base_rss_gb}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--lengths", default=[1024, 2048, 4096],
                      type=lambda text: [int(n) for n in text.split(",") if n.strip()],
                      help="Comma-separated sequence lengths, multiples of 2 * window.")
  parser.add_argument("--repeats", type=int, default=5, help="Timed steps per length.")
  parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per length first.")
  parser.add_argument("--threads", type=int, default=harness.cores(),
                      help="torch.set_num_threads; defaults to the usable cores.")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--window", type=int, default=256, help="One-sided window.")
  parser.add_argument("--model", action="store_true",
                      help="Time the whole LongformerModel instead of the attention core.")
  parser.add_argument("--layers", type=int, default=12, help="Layers, with --model.")
  parser.add_argument("--global_tokens", type=int, default=0,
                      help="Leading global tokens, with --model.")
  parser.add_argument("--remat", action="store_true",
                      help="With --model: gradient checkpointing of every layer.")
  parser.add_argument("--out", default=None, help="Write the JSON list of results here.")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()

  for length in args.lengths:
    if length <= 0 or (not args.model and length % (2 * args.window)):
      parser.error(f"length {length} is not a positive multiple of 2 * window = "
                   f"{2 * args.window}, which HF's layer asserts")
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")

  if args.child:
    torch.set_num_threads(args.threads)
    harness.print_record(_measure_one_length(args, args.lengths[0]))
    return

  what = f"LongformerModel of {args.layers} layers" if args.model else "attention core"
  print(f"{what}: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads} threads, {args.heads}x{args.head_dim} heads, "
        f"one-sided window {args.window}, {args.warmup} warmup + {args.repeats} repeats")
  results = []
  for length in args.lengths:
    # This run's arguments, then one length: argparse keeps an option's last value.
    record = harness.measure_in_child(
        [sys.executable, "-m", "experiments.bench.hf_longformer", *sys.argv[1:], "--child",
         f"--lengths={length}"], cwd=harness.REPO)
    status = record.pop("status")
    if status != "ok":
      print(f"length {length}: the measurement {status}", file=sys.stderr)
      continue
    results.append(record)
    print(f"length {length:>6}: median {record['median_s']:.4f} s, "
          f"peak RSS {record['peak_rss_gb']:.2f} GB (base {record['base_rss_gb']:.2f} GB)",
          flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    harness.write_json(args.out, results)
  if len(results) != len(args.lengths):
    sys.exit(1)


if __name__ == "__main__":
  main()
