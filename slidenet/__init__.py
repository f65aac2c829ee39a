"""slidenet: convolutional networks from first principles, in the notation of cs231n lecture 5.

    >>> from slidenet import Net
    >>> net = Net.from_pattern("INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> FC(10)")
    >>> print(net.summary())

    >>> model = slidenet.fit(net, x, y, epochs=2)        # arrays in memory -> a trained Model
    >>> model = slidenet.load("runs/demo/best.npz")     # a trained model
    >>> model.predict(images)                             # uint8 (N, H, W, D) -> probabilities
"""
from slidenet.training.fitting import fit
from slidenet.model import Model, load
from slidenet.net import Net

__all__ = ["Model", "Net", "fit", "load"]
__version__ = "0.2.0"
