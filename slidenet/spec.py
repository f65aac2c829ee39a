"""What one layer of a pattern says, after parsing and before any shapes are known.

`slidenet.pattern.parse` turns ``"INPUT(32x32x3) -> CONV(10, 5x5) -> FC(10)"`` into a list of
`LayerSpec`; `slidenet.shapes.infer` adds the shapes; `slidenet.layers` builds the layers.
Defaults are already applied here (``CONV(K)`` is 3x3, stride 1, padding 1), so every field a
kind uses is filled and every field it does not use is None.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

# Layer kinds, as written in patterns (POOL is parsed as MAXPOOL).
KINDS = ("INPUT", "CONV", "MAXPOOL", "AVGPOOL", "FC", "RELU", "LEAKYRELU", "TANH", "SIGMOID",
         "DROPOUT", "BATCHNORM")


@dataclass(frozen=True)
class LayerSpec:
    kind: str                              # one of KINDS
    text: str                              # the layer as written, e.g. "CONV(32, 5x5, s=2)"
    column: int                            # 0-based column of `text` in the pattern
    shape: Optional[Tuple[int, int, int]] = None   # INPUT: (height, width, depth)
    filters: Optional[int] = None          # CONV: number of filters K; FC: number of outputs
    size: Optional[Tuple[int, int]] = None     # CONV/POOL window (F_h, F_w)
    stride: Optional[Tuple[int, int]] = None   # CONV/POOL stride (S_h, S_w)
    pad: Optional[Tuple[int, int]] = None      # CONV zero padding per side (P_h, P_w); POOL (0, 0)
    alpha: Optional[float] = None          # LEAKYRELU negative slope
    rate: Optional[float] = None           # DROPOUT probability of dropping a unit
