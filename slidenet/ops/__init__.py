"""Pure NumPy kernels: each is a forward(...) -> (out, cache) and backward(dout, cache) pair.

`slidenet.ops.naive` holds the lecture's loop versions, used as the oracle in tests.
`slidenet.ops.runtime` says how they run: the scratch-memory budget of one call
(`set_memory_budget`), the worker threads (`set_threads`), reused buffers.
`set_conv_algorithm` chooses how convolutions run: "auto" (Winograd's F(2, 3) where it applies),
or "im2col" everywhere.
`slidenet.ops.compiled` holds optional numba versions of the passes around the GEMMs.
"""
from slidenet.ops.activations import (
    leaky_relu_backward, leaky_relu_forward, relu_backward, relu_forward, sigmoid_backward,
    sigmoid_forward, tanh_backward, tanh_forward)
from slidenet.ops.batchnorm import batchnorm_backward, batchnorm_forward
from slidenet.ops.conv import conv_backward, conv_forward, set_algorithm as set_conv_algorithm
from slidenet.ops.dropout import dropout_backward, dropout_forward
from slidenet.ops.fc import fc_backward, fc_forward
from slidenet.ops.losses import softmax_loss, svm_loss
from slidenet.ops.pool import pool_backward, pool_forward
from slidenet.ops.runtime import memory_budget, set_memory_budget, set_threads, threads

__all__ = [
    "batchnorm_backward", "batchnorm_forward", "conv_backward", "conv_forward",
    "dropout_backward", "dropout_forward", "fc_backward", "fc_forward", "leaky_relu_backward",
    "leaky_relu_forward", "memory_budget", "pool_backward", "pool_forward", "relu_backward",
    "relu_forward", "set_conv_algorithm", "set_memory_budget", "set_threads", "sigmoid_backward",
    "sigmoid_forward", "softmax_loss", "svm_loss", "tanh_backward", "tanh_forward", "threads",
]
