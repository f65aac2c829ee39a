"""Pure NumPy kernels: each is a forward(...) -> (out, cache) and backward(dout, cache) pair.

`slidenet.ops.naive` holds the lecture's loop versions, used as the oracle in tests.
Convolution has one pair per algorithm (`im2col`, `fullconv`, `winograd`, `winograd4`,
`winograd2d` (F(4x4, 3x3), `conv.winograd_f44`), `direct`; training's stride-2 3x3 CONVs
through their per-side padding, `conv.winograd_s2_train`), inference's forwards alone
(`conv.winograd_f44`'s, `conv.winograd_s2` at stride 2, `conv.winograd_block` for a residual
block)
and a dispatcher (`conv`): `set_conv_algorithm` chooses for the whole process ("auto", or one
pair everywhere).
`slidenet.ops.runtime` says how kernels run: the scratch-memory budget of one call
(`set_memory_budget`), the worker threads (`set_threads`), reused buffers.
`slidenet.ops.compiled` holds optional numba versions of the passes around the GEMMs;
`slidenet.ops.blas` the GEMM of NumPy's BLAS as a function compiled code can call.
"""
from slidenet.ops.activations import (
    add_forward, add_into, leaky_relu_backward, leaky_relu_forward, relu6_backward, relu6_forward, relu_backward,
    relu_forward, relu_inplace, sigmoid_backward,
    sigmoid_forward, tanh_backward, tanh_forward)
from slidenet.ops.batchnorm import BATCHNORM_EPSILON, batchnorm_backward, batchnorm_forward
from slidenet.ops.conv import (
    conv_backward, conv_forward, conv_infer, prepare_conv, set_algorithm as set_conv_algorithm)
from slidenet.ops.dropout import dropout_backward, dropout_forward
from slidenet.ops.fc import fc_backward, fc_forward, fc_infer
from slidenet.ops.conv.grouped import grouped_conv_backward, grouped_conv_forward
from slidenet.ops.losses import log_softmax, softmax, softmax_loss, svm_loss
from slidenet.ops.pool import (
    avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward)
from slidenet.ops.runtime import memory_budget, set_memory_budget, set_threads, threads

__all__ = [
    "BATCHNORM_EPSILON", "add_forward", "add_into", "avg_pool_backward", "avg_pool_forward", "batchnorm_backward",
    "batchnorm_forward",
    "conv_backward", "conv_forward", "conv_infer", "dropout_backward", "dropout_forward", "fc_backward",
    "fc_forward", "fc_infer", "grouped_conv_backward", "grouped_conv_forward", "leaky_relu_backward", "leaky_relu_forward", "log_softmax", "max_pool_backward",
    "max_pool_forward", "memory_budget", "prepare_conv", "relu6_backward", "relu6_forward", "relu_backward", "relu_forward", "relu_inplace", "set_conv_algorithm",
    "set_memory_budget", "set_threads", "sigmoid_backward", "sigmoid_forward", "softmax",
    "softmax_loss", "svm_loss", "tanh_backward", "tanh_forward", "threads",
]
