"""Draws Pathfinder-style images: are two marked end points joined by one contour?

Every image holds, on a black background (grey 0), white (255) one-pixel-wide contours,
each a smooth random walk of `num_segments` straight segments whose heading turns by at most
`max_turn` per segment:
  - an intact contour;
  - a cut contour, the same kind of walk with its two middle segments left out: two pieces
    of `(n - 2) // 2` and `n - 2 - (n - 2) // 2` segments;
  - `num_distractors` intact contours;
  - two square markers, on the two ends of the intact contour (connected, label 1) or on
    the two outer ends of the cut contour (not connected, label 0).
Both classes therefore have the same contours (which of the two targets is walked first is
a coin flip), the same number of pieces, the same distribution of lit pixels and of the
distance between the markers (the end-to-end distance of one walk); only where the markers
sit differs, so the label can only be read by following the path.
Pieces owned by different contours (and the two halves of the cut one) never touch, not
even diagonally, so the label equals the 8-connectivity of the markers' pixels.

Differences from the generator of Linsley et al. (2018) behind LRA's Pathfinder: its
contours are dashed (a gap after every dash), its markers are circles, and its negatives
mark the ends of two separate contours; here contours are solid one-pixel lines of one
grey level, markers are squares, and a negative is made by one cut in a contour.
"""

import dataclasses
import math
import random

import numpy as np

_GAP = 0  # Owner id of a segment that is walked but not drawn (the cut); also background.
_INTACT, _CUT_FIRST, _CUT_SECOND, _FIRST_DISTRACTOR = 1, 2, 3, 4
_START_TRIES = 16  # Fresh starting points for one contour before the image is redrawn.
_SEGMENT_TRIES = 30  # Segments tried from one starting point, backtracking included.
_TURN_TRIES = 4  # Headings tried for one segment before the one before it is redrawn.
_IMAGE_TRIES = 100  # Fresh canvases before giving up (a geometry that does not fit).


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Drawing parameters of one kind of image.

  Attributes:
    resolution: image side in pixels.
    num_segments: segments per contour (LRA's contour length: 6, 9 or 14).
    segment_length: length of one segment in pixels.
    max_turn: largest heading change between two segments, in radians.
    num_distractors: intact contours besides the two targets.
    marker_size: side of the square markers in pixels (odd).
  """

  resolution: int
  num_segments: int
  segment_length: float
  max_turn: float
  num_distractors: int
  marker_size: int


def geometry(resolution: int, num_segments: int) -> Geometry:
  """Returns the geometry of images of side `resolution` with contours of `num_segments`.

  Lengths scale with the resolution, so an image at 128 pixels is a 32-pixel one drawn
  four times larger with lines as thin, with more distractors (2, 3, 5 at 32, 64, 128).
  """
  return Geometry(
      resolution=resolution,
      num_segments=num_segments,
      segment_length=1.5 * resolution / 32,
      max_turn=math.radians(30),
      num_distractors=1 + resolution // 32,
      marker_size=3 + 2 * (resolution // 64))


class _Canvas:
  """Which contour piece owns each pixel (0: background) of a square image."""

  def __init__(self, resolution: int):
    self.resolution = resolution
    # A one-pixel background border lets neighbour look-ups skip bounds checks.
    self._width = resolution + 2
    self._owner = bytearray(self._width * self._width)
    w = self._width
    self._neighbourhood = (-w - 1, -w, -w + 1, -1, 0, 1, w - 1, w, w + 1)

  def segment(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
    """Returns the pixels of a segment, in order and 8-connected."""
    # Samples at most one pixel apart round to pixels at most one apart in x and in y.
    steps = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0)))
    dx, dy, w = (x1 - x0) / steps, (y1 - y0) / steps, self._width
    pixels = []
    for s in range(steps + 1):
      # Coordinates are >= 0, so int(v + 0.5) rounds.
      p = (int(y0 + dy * s + 0.5) + 1) * w + int(x0 + dx * s + 0.5) + 1
      if not pixels or pixels[-1] != p:
        pixels.append(p)
    return pixels

  def square(self, x: float, y: float, size: int) -> list[int] | None:
    """Returns the pixels of a square centred on pixel (x, y), or None if it sticks out."""
    col, row, half = int(x + 0.5), int(y + 0.5), size // 2
    if min(col, row) < half or max(col, row) + half >= self.resolution:
      return None
    corner = (row - half + 1) * self._width + col - half + 1
    return [corner + r * self._width + c for r in range(size) for c in range(size)]

  def fits(self, pixels: list[int], owner: int) -> bool:
    """Whether `pixels` touch no pixel of another owner, diagonals included."""
    grid = self._owner
    for p in pixels:
      for offset in self._neighbourhood:
        other = grid[p + offset]
        if other and other != owner:
          return False
    return True

  def paint(self, pixels: list[int], owner: int) -> list[int]:
    """Gives the free pixels among `pixels` to `owner` and returns them."""
    painted = [p for p in pixels if not self._owner[p]]
    for p in painted:
      self._owner[p] = owner
    return painted

  def erase(self, pixels: list[int]) -> None:
    for p in pixels:
      self._owner[p] = _GAP

  def image(self) -> np.ndarray:
    """Returns the uint8 `[resolution, resolution]` image: 255 where owned, else 0."""
    owners = np.frombuffer(bytes(self._owner), dtype=np.uint8)
    owners = owners.reshape(self._width, self._width)[1:-1, 1:-1]
    return np.where(owners > 0, 255, 0).astype(np.uint8)


def _walk(canvas: _Canvas, rng: random.Random, owners: list[int],
          geom: Geometry) -> tuple[tuple[float, float], tuple[float, float]] | None:
  """Draws one contour, segment `i` owned by `owners[i]`; returns its two ends, or None.

  The walk backtracks: when no heading fits the next segment, the last segment is undone
  and drawn anew, which finds room on a crowded canvas far more often than restarting.
  """
  # Keeping every point half a marker away from the border leaves room for a marker at
  # either end.
  low = geom.marker_size // 2
  high = geom.resolution - 1 - low
  for _ in range(_START_TRIES):
    # path[i]: the point and heading after i segments, and the pixels segment i painted.
    # Heading for a second random point sends walks across the canvas rather than into
    # the nearest border.
    x, y, tx, ty = (rng.uniform(low, high) for _ in range(4))
    path = [(x, y, math.atan2(ty - y, tx - x), [])]
    failures = 0
    for _ in range(_SEGMENT_TRIES):
      if len(path) > len(owners):
        return path[0][:2], path[-1][:2]
      x, y, heading, _ = path[-1]
      owner = owners[len(path) - 1]
      turned = heading + rng.uniform(-geom.max_turn, geom.max_turn)
      nx = x + geom.segment_length * math.cos(turned)
      ny = y + geom.segment_length * math.sin(turned)
      if low <= nx <= high and low <= ny <= high:
        pixels = [] if owner == _GAP else canvas.segment(x, y, nx, ny)
        if canvas.fits(pixels, owner):
          path.append((nx, ny, turned, canvas.paint(pixels, owner)))
          failures = 0
          continue
      failures += 1
      if failures == _TURN_TRIES:
        if len(path) == 1:
          break  # Stuck at the start: a new starting point.
        canvas.erase(path.pop()[3])
        failures = 0
    for *_, painted in path:
      canvas.erase(painted)
  return None


def draw(rng: random.Random, geom: Geometry,
         connected: bool) -> tuple[np.ndarray, tuple[tuple[int, int], tuple[int, int]]]:
  """Draws one image; see the module docstring.

  Args:
    rng: source of all random choices.
    geom: drawing parameters.
    connected: whether the markers go on one contour (label 1) or on the cut one (label 0).

  Returns:
    The uint8 `[resolution, resolution]` image and the (row, col) centres of the markers.
  """
  n = geom.num_segments
  first_half = (n - 2) // 2
  cut_owners = [_CUT_FIRST] * first_half + [_GAP] * 2 + [_CUT_SECOND] * (n - 2 - first_half)
  targets = [[_INTACT] * n, cut_owners]
  for _ in range(_IMAGE_TRIES):
    canvas = _Canvas(geom.resolution)
    # The second walk has less room; a coin flip decides which target that is, so that
    # their shapes, hence the marker distances, do not depend on the label.
    order = rng.sample((0, 1), 2)
    ends = [None, None]
    for t in order:
      ends[t] = _walk(canvas, rng, targets[t], geom)
      if ends[t] is None:
        break
    if None in ends:
      continue
    marked = 0 if connected else 1
    marked_ends, owners = ends[marked], (targets[marked][0], targets[marked][-1])
    markers = tuple((int(y + 0.5), int(x + 0.5)) for x, y in marked_ends)
    (r0, c0), (r1, c1) = markers
    # Markers never touch each other, so touching markers cannot betray a short loop.
    if max(abs(r1 - r0), abs(c1 - c0)) < geom.marker_size + 1:
      continue
    squares = [canvas.square(x, y, geom.marker_size) for x, y in marked_ends]
    if not all(s is not None and canvas.fits(s, o) for s, o in zip(squares, owners)):
      continue
    for square, owner in zip(squares, owners):
      canvas.paint(square, owner)
    if all(_walk(canvas, rng, [_FIRST_DISTRACTOR + d] * n, geom)
           for d in range(geom.num_distractors)):
      return canvas.image(), markers
  raise RuntimeError(f"could not draw a Pathfinder image with {geom} in {_IMAGE_TRIES} tries")
