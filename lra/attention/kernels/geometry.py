"""Static geometry of one band-kernel call: blocks, reach, and which blocks meet."""

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BandGeometry:
  """Shapes of a band call on a sequence padded to `num_blocks * block` positions.

  Attributes:
    window: one-sided window w.
    causal: keys after the query are excluded.
    block: b, positions per query block and per key block.
    num_blocks: blocks in the padded sequence.
    heads: heads per batch row (row `r` of a head-major array is batch `r // heads`).
    head_dim: the true head dimension (the scale is `1 / sqrt(head_dim)` even when the
      kernel's arrays are padded to a wider one).
  """

  window: int
  causal: bool
  block: int
  num_blocks: int
  heads: int
  head_dim: int

  @property
  def length(self) -> int:
    return self.num_blocks * self.block

  def reblocked(self, block: int) -> "BandGeometry":
    """The same padded sequence in blocks of `block`, a divisor of `block` (both are powers
    of two), so that it divides `length` too."""
    return dataclasses.replace(self, block=block, num_blocks=self.length // block)

  @property
  def reach(self) -> int:
    """c: key blocks on each side of a query block that hold keys within its window."""
    return min(-(-self.window // self.block), self.num_blocks - 1)

  @property
  def span(self) -> int:
    """Key blocks a query block meets (and query blocks a key block meets)."""
    return self.reach + 1 if self.causal else 2 * self.reach + 1

  @property
  def scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)

  def batch_of(self, row):
    """Batch row of head-major row `row` (a truncating division: Mosaic cannot lower the
    sign correction of `//`, and rows are never negative)."""
    return jax.lax.div(row, self.heads)

  def key_blocks_of(self, query_block):
    """First and last key block (inclusive) within reach of `query_block`."""
    first = jnp.maximum(query_block - self.reach, 0)
    last = query_block if self.causal else jnp.minimum(query_block + self.reach,
                                                       self.num_blocks - 1)
    return first, last

  def query_blocks_of(self, key_block):
    """First and last query block (inclusive) whose windows reach `key_block`."""
    first = key_block if self.causal else jnp.maximum(key_block - self.reach, 0)
    return first, jnp.minimum(key_block + self.reach, self.num_blocks - 1)

  def key_block_at(self, query_block, step):
    """Key block of grid step `step` of `query_block` (may fall outside the sequence)."""
    return query_block - self.reach + step

  def query_block_at(self, key_block, step):
    """Query block of grid step `step` of `key_block` (may fall outside the sequence)."""
    return key_block + step if self.causal else key_block - self.reach + step
