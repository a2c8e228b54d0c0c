r"""Times PyTorch's FlexAttention with a causal sliding window, forward + backward.

The baseline `flex_causal_window` of `experiments.bench.gpu`, which runs this module with its
own Python where that Python imports torch (torch is no dependency of the project; the GPU
machines' images hold it):

  python -m experiments.bench.flex_attention --cases=4x16384x16x64:256,4x16384x16x64:512

The mask is the causal `sliding_window` of PyTorch's `benchmarks/transformer/score_mod.py`:
query i sees key j when 0 <= i - j <= w, the pairs of `local_causal` with one-sided window w
and of cuDNN's `local_window_size=(w, 0)`. `flex_attention` is compiled once (`torch.compile`)
and its block mask made once per shape and window; the mask reads the window from a tensor,
so that one compiled kernel serves every window. One step is the forward and
`out.backward(g)` of a fixed random output gradient `g` into q, k and v, arrays of
`[batch, heads, length, head_dim]`.

Each step is timed with CUDA events after `--warmup` steps, with a large matmul queued before
each start event, so that the events measure the device's work and not the host's launch of
it. It needs a GPU: FlexAttention has no backward on a CPU. Prints one JSON line:
`{"torch", "device", "timer", "rows": [{"shape", "window", "median_s", "times_s"}]}`.
Imports neither jax nor `lra`.
"""

import argparse
import statistics

import torch
from torch.nn.attention import flex_attention as flex

from experiments.bench import harness


def _cases(text: str) -> dict[tuple[int, ...], list[int]]:
  """`BxLxHxD:w,...` -> shape -> its windows."""
  cases = {}
  for case in text.split(","):
    shape, _, window = case.partition(":")
    cases.setdefault(tuple(int(n) for n in shape.split("x")), []).append(int(window))
  return cases


def _time_steps(step, *, warmup: int, repeats: int) -> list[float]:
  """Device seconds of each of `repeats` calls of `step` after `warmup` untimed ones."""
  for _ in range(warmup):
    step()
  busy = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
  events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)]
  torch.cuda.synchronize()
  for start, end in events:
    torch.matmul(busy, busy)  # the stream stays busy while the host launches the step
    start.record()
    step()
    end.record()
  torch.cuda.synchronize()
  return [start.elapsed_time(end) / 1e3 for start, end in events]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--cases", required=True, type=_cases,
                      help="batch x length x heads x head_dim : one-sided window, "
                           "comma-separated.")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--repeats", type=int, default=20, help="Timed steps.")
  parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
  args = parser.parse_args()
  if not torch.cuda.is_available():
    parser.error("no GPU for torch here, and FlexAttention's backward runs on a GPU only")

  device = torch.device("cuda")
  dtype = getattr(torch, args.dtype)
  window = torch.tensor(0, device=device)

  def causal_window(b, h, q_idx, kv_idx):
    del b, h
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

  attend = torch.compile(flex.flex_attention)
  rows = []
  for (batch, length, heads, head_dim), windows in args.cases.items():
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v, cotangent = (torch.randn(batch, heads, length, head_dim, device=device,
                                      dtype=dtype, generator=generator) for _ in range(4))
    for x in (q, k, v):
      x.requires_grad_()
    for w in windows:
      window.fill_(w)
      block_mask = flex.create_block_mask(causal_window, None, None, length, length,
                                          device=device)

      def step(block_mask=block_mask):
        for x in (q, k, v):
          x.grad = None
        attend(q, k, v, block_mask=block_mask).backward(cotangent)

      times = _time_steps(step, warmup=args.warmup, repeats=args.repeats)
      rows.append({"shape": [batch, length, heads, head_dim], "window": w,
                   "median_s": statistics.median(times), "times_s": times})
  harness.print_record({"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                        "timer": "cuda events", "rows": rows})


if __name__ == "__main__":
  main()
