"""Benchmarks, one module each, on one harness (`harness`); no benchmark imports another.

  python -m experiments.bench.attention          attention forward + backward against length
  python -m experiments.bench.gpu                the kernels on an accelerator, device-timed
  python -m experiments.bench.sequence_parallel  sequence-parallel attention, simulated devices
  python -m experiments.bench.model              a config's train step: steps/s, memory
  python -m experiments.bench.pretrained         a pretrained-size Longformer beside HF's
  python -m experiments.bench.kernel_ptxas       the GPU kernels' registers, compiled offline
  `python -m experiments.compare --efficiency`   train steps against length (`efficiency`)

`hf_longformer` and `flex_attention` are the torch scripts that measure HuggingFace's
Longformer and PyTorch's FlexAttention, run as `python -m experiments.bench.<name>` by a Python
that holds torch. Rows come from `harness.rows`: the attention registry's variants on each
implementation, and the named baselines. A benchmark defines its flags when it runs
(`define_flags`, under `__main__`), so that importing one defines none: tests import them
side by side. This package imports nothing, so that a Python with torch alone can run the
torch scripts.
"""
