"""Bad input gets a clear ValueError/TypeError; valid but unusual arrays are accepted."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

import relprop as rp

import nets

METHODS = [rp.gradient, rp.sensitivity, rp.gradient_x_input, rp.deconvnet, rp.guided_backprop,
           rp.taylor, lambda n, x, t, **k: rp.lrp(n, x, t, "epsilon_plus_flat", **k)]


@pytest.fixture
def cnn():
    return nets.cnn(np.random.default_rng(0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("x,exc,match", [
    (np.ones((3, 12, 12)), ValueError, r"expects \(n, 3, 12, 12\)|shape"),
    (np.ones((2, 3, 12, 11)), ValueError, r"expects \(n, 3, 12, 12\)"),
    (np.ones((0, 3, 12, 12)), ValueError, "empty batch"),
    (np.full((1, 3, 12, 12), np.nan), ValueError, "NaN"),
    (np.full((1, 3, 12, 12), np.inf), ValueError, "NaN or infinite"),
    (np.ones((1, 3, 12, 12), dtype=complex), TypeError, "complex"),
    (np.ones((1, 3, 12, 12), dtype=bool), TypeError, "bool"),
    (np.array([["a"]]), TypeError, "dtype"),
    (5.0, ValueError, "batch"),
])
def test_bad_inputs_raise_clear_errors(cnn, method, x, exc, match):
    with pytest.raises(exc, match=match):
        method(cnn, x, 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target,exc,match", [
    (5, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    ([0, 1, 2], ValueError, "3 classes for a batch of 2"),
    ([0, 9], ValueError, "out of range"),
    (1.5, TypeError, "target"),
    ("cat", ValueError, "'pred', got 'cat'"),
    (np.ones((2, 4)), ValueError, "seed has shape"),
    (np.full((2, 5), np.nan), ValueError, "NaN"),
])
def test_bad_targets_raise_clear_errors(cnn, method, target, exc, match):
    with pytest.raises(exc, match=match):
        method(cnn, np.ones((2, 3, 12, 12)), target)


def test_non_contiguous_and_negative_stride_inputs_are_accepted(cnn):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 3, 12, 24))
    x = base[:, :, :, ::2]  # non-contiguous
    assert not x.flags.c_contiguous
    assert_allclose(rp.gradient(cnn, x, 1), rp.gradient(cnn, np.ascontiguousarray(x), 1))
    y = base[::-1, :, ::-1, :12]  # negative strides
    assert_allclose(rp.lrp(cnn, y, 1, "epsilon_plus"), rp.lrp(cnn, y.copy(), 1, "epsilon_plus"))
    f = np.asfortranarray(base[:, :, :, :12])
    assert_allclose(cnn(f), cnn(np.ascontiguousarray(f)))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float16, np.int32])
def test_integer_and_half_inputs_compute_in_float32(cnn, dtype):
    x = np.ones((1, 3, 12, 12), dtype=dtype)
    assert cnn(x).dtype == np.float32
    assert rp.gradient(cnn, x, 0).dtype == np.float32


def test_nan_check_can_be_skipped(cnn):
    x = np.ones((1, 3, 12, 12))
    x[0, 0, 0, 0] = np.nan
    assert cnn.forward(x, check_finite=False).shape == (1, 5)


def test_bad_layer_parameters():
    with pytest.raises(ValueError, match="2 dimensions"):
        rp.Dense(np.ones(3))
    with pytest.raises(ValueError, match="bias must have shape"):
        rp.Dense(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        rp.Dense(np.ones((0, 3)))
    with pytest.raises(ValueError, match="4 dimensions"):
        rp.Conv2d(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        rp.Conv2d(np.ones((2, 3, 3, 3)), stride=0)
    with pytest.raises(TypeError, match="stride must be an integer"):
        rp.Conv2d(np.ones((2, 3, 3, 3)), stride=1.5)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        rp.Conv2d(np.ones((2, 3, 3, 3)), padding=-1)
    with pytest.raises(ValueError, match="at most half"):
        rp.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="NaN"):
        rp.Dense(np.full((2, 2), np.nan))
    with pytest.raises(TypeError, match="relprop layers"):
        rp.Sequential([lambda x: x])
    with pytest.raises(ValueError, match="at least one layer"):
        rp.Sequential([])


def test_bad_method_arguments(cnn):
    x = np.ones((1, 3, 12, 12))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        rp.gradient(cnn, x, 0, batch_size=0)
    with pytest.raises(ValueError, match="root must be"):
        rp.taylor(cnn, x, 0, root="far")
    with pytest.raises(ValueError, match="not broadcastable"):
        rp.taylor(cnn, x, 0, root=np.ones(5))
    with pytest.raises(ValueError, match="unknown method"):
        rp.explain(cnn, x, 0, method="magic")
    with pytest.raises(TypeError):
        rp.set_num_threads("two")
    with pytest.raises(ValueError):
        rp.set_num_threads(-1)


@pytest.mark.parametrize("method, wrong, listed", [
    ("gradient", "foo", "batch_size, check_finite"),
    ("guided_backprop", "epsilon", "batch_size, check_finite"),
    ("taylor", "steps", "root, max_steps"),
    ("smoothgrad", "sigmaa", "n, sigma, seed"),
    ("integrated_gradients", "step", "baseline, steps"),
    ("lrp.epsilon_plus_flat", "gamma", "layerwise, epsilon, stabilizer"),
    ("lrp.epsilon", "eps", "layerwise, epsilon"),
])
def test_explain_names_a_methods_parameters(cnn, method, wrong, listed):
    """A parameter the method does not take: a TypeError naming the method and what it takes
    (not a nested function's name, nor a composite's constructor alone)."""
    x = np.ones((1, 3, 12, 12))
    with pytest.raises(TypeError, match=f"method '{method}' takes no parameter '{wrong}'; "
                                        f"its parameters: .*{listed}"):
        rp.explain(cnn, x, 0, method, **{wrong: 1})
    if not method.startswith("lrp."):  # called directly: Python's message, with its own name
        name = method.split(".")[-1]
        with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword"):
            getattr(rp, name)(cnn, x, 0, **{wrong: 1})
    # and the parameters it lists are taken
    rp.explain(cnn, x, 0, method, batch_size=1)


def test_oversized_shapes_raise_before_allocating():
    net = rp.Sequential([rp.Flatten(), rp.Dense(np.ones((1 << 20, 4), dtype=np.float32))])
    x = np.broadcast_to(np.float32(1), (1 << 16, 4))  # 64k x 1M outputs = 2**36 elements
    with pytest.raises(MemoryError, match="batch_size"):
        net(x[:, :, None][:, :, 0])


@pytest.mark.parametrize("layers, shape, match", [
    ([rp.Upsample(scale_factor=1e12)], (1, 2, 2), "per-sample shape .* more than relprop's limit"),
    ([rp.Pad((10**9,) * 4)], (2, 3, 3), "per-sample shape .* more than relprop's limit"),
    ([rp.Upsample(size=(1 << 30, 1 << 30))], (1, 2, 2), "per-sample shape .* more than"),
    ([rp.Pad((-7, 7))], (2, 6), "crops more than per-sample shape"),
    ([rp.Pad((3, -100))], (2, 6), "crops more than per-sample shape"),
])
def test_layers_whose_output_cannot_exist_are_refused_when_built(layers, shape, match):
    """A sample's activation beyond MAX_ELEMENTS (no batch size helps), or a crop of more than
    an axis holds (torch refuses it; the zeros would be silently wrong): a ValueError naming the
    layer when the network is built, not a MemoryError or NumPy's broadcast error at run time."""
    with pytest.raises(ValueError, match=f"layer 0: .*{match}"):
        rp.Sequential(layers, input_shape=shape)


def test_pad_crop_of_a_whole_axis_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(12.0).reshape(1, 2, 6)
    net = rp.Sequential([rp.Pad((-6, 6))], input_shape=(2, 6))
    assert_allclose(net(x), torch.nn.functional.pad(torch.tensor(x), (-6, 6)).numpy())


@pytest.mark.parametrize("make", [lambda v: rp.MaxPool1d(2, stride=v), lambda v: rp.AvgPool1d(v),
                                  lambda v: rp.AvgPool1d(2, stride=v),
                                  lambda v: rp.AdaptiveAvgPool1d(v)])
def test_one_d_pool_sizes_beyond_the_kernels_range_are_refused(make):
    """As Conv1d's and the 2-D layers': not a pybind11 signature dump from the kernel call."""
    with pytest.raises(ValueError, match="must be at most 2147483647"):
        make(1 << 63)


@pytest.mark.parametrize("shape, exc, match", [
    ((3.5, 12, 12), TypeError, r"input_shape must be a sequence of ints, got \(3.5, 12, 12\)"),
    ((3, 12, 12.0), TypeError, "input_shape must be a sequence of ints"),
    ((3, 0, 12), ValueError, r"input_shape must be positive sizes, got \(3, 0, 12\)"),
    ((True, 12, 12), TypeError, "input_shape must be a sequence of ints"),
])
def test_sample_shapes_are_ints_not_truncated_floats(cnn, shape, exc, match):
    """A per-sample shape of 3.5 was truncated to 3 (the network built, planned and counted
    for a shape nobody gave); every entry point that takes one refuses it the same way."""
    with pytest.raises(exc, match=match):
        rp.Sequential(list(cnn.layers), input_shape=shape)
    for call in (cnn.plans, cnn.node_flops, cnn.tensor_shapes):
        with pytest.raises(exc, match=match):
            call(shape)
