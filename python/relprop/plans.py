"""Plans: how a layer with weights runs one of its passes (XNNPACK's create/reshape/run split:
layers describe, plans run).

A plan is made once per (layer, weights, per-sample input shape, dtype, direction, request) by
:meth:`relprop.layers.Linear.plan` and cached on the layer (so with the network).  It holds the
algorithm the kernels' planner chose for that pass (:func:`relprop.ops.conv2d_plan`, from the
ISA's table and one sample's shape: never the batch, so the bits of a sample do not depend on
the batch it is in), the sizes of the packed weights and of the workspace, and the packed
weights themselves once a call keeps them; every kernel of the pass runs through it with
those.  The weights are the layer's own or rule-modified ones (LRP's ``W+``, ``[W; W+]``, ...),
each with its plans.

Packed copies: small calls spend much of a layer's time packing its weights for the GEMM, so
for calls of at most :data:`PACK_MAX_BATCH` samples (Dense) or :data:`PACK_MAX_PIXELS` output
pixels (Conv2d) a plan keeps its packing (weights of at most :data:`PACK_MAX_BYTES`);
Winograd's transformed weights are also kept for large calls up to
:data:`WINOGRAD_KEEP_PAIRS` channel pairs (their transform costs more than their packing
saves).  Whether a packing is kept never changes a bit; :func:`release_packed` (called by
``relprop.release_memory``) drops them.
"""
from __future__ import annotations

import math
import threading
import weakref

from . import ops

PACK_MAX_BATCH = 16
PACK_MAX_PIXELS = 1024
PACK_MAX_BYTES = 32 << 20
#: (128 x 128: 2.4 MB of F(4x4) packing; kept for every large layer of ResNet-50 they held
#: 255 MB more during an LRP call at batch 8)
WINOGRAD_KEEP_PAIRS = 128 * 128
_PACKING = weakref.WeakSet()  # the plans that hold a packing


def release_packed():
    """Drop the packed weights every plan keeps."""
    for plan in list(_PACKING):
        plan.release()


class Plan:
    """One pass of a layer with weights ``w`` (``backward_pass``: the vector-Jacobian product
    w.r.t. the input, else the forward pass): its ``algorithm``, ``packed_bytes`` and
    ``workspace_bytes`` (per thread, besides the output, the packing and the GEMM core's
    thread buffers), and the packing it keeps."""

    algorithm = "gemm"
    packed_bytes = 0
    workspace_bytes = 0

    def __init__(self, w, backward):
        self.w, self.backward_pass = w, backward
        self._packed = None
        self._lock = threading.Lock()

    def __repr__(self):
        return (f"{type(self).__name__}({'backward' if self.backward_pass else 'forward'}, "
                f"{self.algorithm}, packed {self.packed_bytes} B, workspace "
                f"{self.workspace_bytes} B)")

    def packing(self, n):
        """The packed weights for a call on ``n`` samples: kept ones, made on the first call
        that keeps them, or None (the kernel packs for the call)."""
        if not self._keep(n) or self.w.nbytes > PACK_MAX_BYTES:
            return None
        if self._packed is None:
            packed = self._pack()
            with self._lock:
                if self._packed is None:
                    self._packed = packed
                    _PACKING.add(self)
        return self._packed

    def release(self):
        with self._lock:
            self._packed = None

    def _keep(self, n):
        raise NotImplementedError

    def _pack(self):
        raise NotImplementedError


class DensePlan(Plan):
    """A Dense pass: one GEMM."""

    def _keep(self, n):
        return n <= PACK_MAX_BATCH

    def _pack(self):
        return ops.dense_pack(self.w, not self.backward_pass)

    def forward(self, x, b, relu=False):
        return ops.dense_forward(x, self.w, b, self.packing(len(x)), relu=relu)

    def backward(self, g, mask=None):
        return ops.dense_backward(g, self.w, self.packing(len(g)), mask=mask)

    def lrp_epsilon(self, r, z, a, eps):
        return ops.dense_lrp_epsilon(r, z, a, self.w, eps, self.packing(len(r)))


class ConvPlan(Plan):
    """A Conv2d pass (``layer``'s geometry, weights ``w``) on inputs of per-sample shape
    ``sample`` in ``w``'s dtype, by the algorithm ``ops.conv2d_plan`` gives for ``request``."""

    def __init__(self, layer, w, sample, backward, request):
        super().__init__(w, backward)
        self.geometry = {"dilation": layer.dilation, "groups": layer.groups}
        self.stride, self.padding = layer.stride, layer.padding
        info = ops.conv2d_plan(sample, w.shape, layer.stride, layer.padding, w.dtype, backward,
                               request=request, **self.geometry)
        self.algorithm, self.packed_bytes, self.workspace_bytes = info
        self.tile = info.tile
        self.out_pixels = math.prod(layer.output_shape(tuple(sample))[1:])

    def _keep(self, n):
        small = n * self.out_pixels <= PACK_MAX_PIXELS
        return small or (self.tile is not None and
                         self.w.shape[0] * self.w.shape[1] <= WINOGRAD_KEEP_PAIRS)

    def _pack(self):
        return ops.conv2d_pack(self.w, self.backward_pass, self.stride, self.padding,
                               algorithm=self.algorithm, **self.geometry)

    def _args(self, n):
        return dict(stride=self.stride, padding=self.padding, packed=self.packing(n),
                    algorithm=self.algorithm, **self.geometry)

    def forward(self, x, b, relu=False):
        return ops.conv2d_forward(x, self.w, b, relu=relu, **self._args(len(x)))

    def forward_split(self, x, b, split):
        return ops.conv2d_forward_split(x, self.w, b, split, **self._args(len(x)))

    def forward_relu_pool(self, x, b):
        return ops.conv2d_forward_relu_maxpool(x, self.w, b, **self._args(len(x)))

    def backward(self, g, x_shape, mask=None):
        return ops.conv2d_backward(g, self.w, x_shape[2:], mask=mask, **self._args(len(g)))

    def backward_pooled(self, g, argmax, pooled, x_shape, mask=None):
        return ops.conv2d_backward_pooled(g, argmax, self.w, x_shape[2:], pooled=pooled,
                                          mask=mask, **self._args(len(g)))

    def lrp_epsilon(self, r, z, a, eps):
        return ops.conv2d_lrp_epsilon(r, z, a, self.w, eps, **self._args(len(r)))
