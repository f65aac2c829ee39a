"""slidenet: convolutional networks from first principles, in the notation of cs231n lecture 5.

    >>> from slidenet import Net
    >>> net = Net.from_pattern("INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> FC(10)")
    >>> print(net.summary())
"""
from slidenet.net import Net

__all__ = ["Net"]
__version__ = "0.1.0"
