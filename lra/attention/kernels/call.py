"""The static description of one band-kernel call, shared by the GPU and TPU kernels."""

import dataclasses
import math

from lra.attention import common
from lra.attention.kernels import tiles


@dataclasses.dataclass(frozen=True)
class BandCall:
  """Shapes and options of one call of the band kernels.

  Attributes:
    plan: blocks and reach on the kernels' padded length.
    heads: query heads H.
    kv_heads: k/v heads K, dividing H: query head `h` reads k/v head `h // (H / K)`.
    head_dim: the true head dimension (the scale is `1 / sqrt(head_dim)` even when the
      kernels' arrays are padded to a wider one).
    dropout_rate: attention dropout rate; the mask comes from `common.dropout_keep`.
    segmented: segment ids are given.
  """

  plan: common.BandPlan
  heads: int
  kv_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  segmented: bool = False

  @property
  def group(self) -> int:
    """G: query heads per k/v head."""
    return self.heads // self.kv_heads

  @property
  def scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)

  @property
  def scale_log2(self) -> float:
    """The scale of base-2 scores (`tiles`)."""
    return self.scale * tiles.LOG2_E

  def reblocked(self, block: int) -> "BandCall":
    return dataclasses.replace(self, plan=self.plan.reblocked(block))
