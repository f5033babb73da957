"""The NumPy reference itself, on cases whose answers are known by hand."""
import numpy as np

from fastwn import _reference as R


def test_forward_known_values():
    v = np.array([[3.0, 4.0], [0.0, 2.0]])
    w, norm = R.forward(v, np.array([10.0, -1.0]), dim=0)
    np.testing.assert_allclose(norm, [5.0, 2.0])
    np.testing.assert_allclose(w, [[6.0, 8.0], [0.0, -1.0]])


def test_norm_of_w_is_abs_g():
    rng = np.random.default_rng(0)
    v, g = rng.normal(size=(4, 3, 5)), rng.normal(size=3)
    w, _ = R.forward(v, g, dim=1)
    np.testing.assert_allclose(np.sqrt((w**2).sum(axis=(0, 2))), np.abs(g))


def test_whole_tensor_and_negative_dim():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 4))
    w, norm = R.forward(v, np.array([2.0]), dim=None)
    np.testing.assert_allclose(norm, [np.linalg.norm(v)])
    np.testing.assert_allclose(np.linalg.norm(w), 2.0)
    np.testing.assert_allclose(R.forward(v, np.ones(4), dim=-1)[0], R.forward(v, np.ones(4), dim=1)[0])


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    v, g, gw = rng.normal(size=(3, 5)), rng.normal(size=5), rng.normal(size=(3, 5))
    grad_v, grad_g = R.backward(gw, v, g, dim=1)
    loss = lambda v_, g_: (R.forward(v_, g_, dim=1)[0] * gw).sum()  # noqa: E731
    h = 1e-6
    for idx in np.ndindex(v.shape):
        dv = np.zeros_like(v)
        dv[idx] = h
        np.testing.assert_allclose((loss(v + dv, g) - loss(v - dv, g)) / (2 * h), grad_v[idx], rtol=1e-6, atol=1e-8)
    for k in range(5):
        dg = np.zeros_like(g)
        dg[k] = h
        np.testing.assert_allclose((loss(v, g + dg) - loss(v, g - dg)) / (2 * h), grad_g[k], rtol=1e-6, atol=1e-8)


def test_grad_v_is_orthogonal_to_v():
    rng = np.random.default_rng(3)
    v, gw = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    grad_v, _ = R.backward(gw, v, rng.normal(size=6), dim=0)
    np.testing.assert_allclose((grad_v * v).sum(axis=1), 0.0, atol=1e-12)


def test_eps_clamps_the_norm():
    v = np.array([[1e-4, 0.0], [3.0, 4.0]])
    w, norm = R.forward(v, np.array([1.0, 1.0]), dim=0, eps=1e-2)
    np.testing.assert_allclose(norm, [1e-4, 5.0])  # the norm is reported unclamped
    np.testing.assert_allclose(w[0], [1e-2, 0.0])
    grad_v, grad_g = R.backward(np.ones((2, 2)), v, np.array([2.0, 1.0]), dim=0, eps=1e-2)
    np.testing.assert_allclose(grad_v[0], [200.0, 200.0])  # linear below eps: g / eps
    np.testing.assert_allclose(grad_g[0], 1e-4 / 1e-2)
