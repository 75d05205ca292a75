// LEM's two sequential recurrences on the CPU (longrecall.ops.lem.fused loads it; see its docstring).
//
// Forward, per batch row, with the input maps inp_n = V u_n + b (B, T, 4N) computed outside:
//
//   [h1, h2, hz] = W_h y_{n-1} + b_h
//   dt1 = dt sigmoid(i1 + h1),  dt2 = dt sigmoid(i2 + h2)
//   z_n = (1 - dt1) z_{n-1} + dt1 tanh(iz + hz)
//   y_n = (1 - dt2) y_{n-1} + dt2 tanh(W_y z_n + b_y + iy)
//
// Backward: everything that does not depend on the running gradient (the gates, tanh values and the
// weight gradients) is computed outside as whole-sequence tensor operations; this kernel runs only
// the adjoint recurrence, in reverse, with gy, gz the gradients reaching y_n and z_n:
//
//   gy += dys_n;   d_dt2 = gy (e - y_{n-1});   dg = gy dt2 (1 - e^2)
//   gz += dzs_n + W_y^T dg;   d_dt1 = gz (c - z_{n-1});   dcz = gz dt1 (1 - c^2)
//   da1 = d_dt1 dt1 (1 - dt1 / dt),  da2 = d_dt2 dt2 (1 - dt2 / dt)
//   gy <- gy (1 - dt2) + W_h^T [da1, da2, dcz];   gz <- gz (1 - dt1)
//
// writing d(pre-activations) per step: dpre_n = [da1, da2, dcz, dg] (B, T, 4N), the gradient of inp.
// Inputs are contiguous; W_h (3N, N), W_y (N, N) row-major as nn.Linear stores them.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
void forward_kernel(const scalar_t* inp, const scalar_t* Wh, const scalar_t* bh, const scalar_t* Wy,
                    const scalar_t* by, const scalar_t* y0, const scalar_t* z0, scalar_t* ys, scalar_t* zs,
                    scalar_t dt, int64_t Bt, int64_t T, int64_t N) {
  at::parallel_for(0, Bt, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> y(N), z(N), h(3 * N);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < N; ++k) y[k] = y0[b * N + k], z[k] = z0[b * N + k];
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* in = inp + (b * T + t) * 4 * N;
        for (int64_t r = 0; r < 3 * N; ++r) {  // h = W_h y + b_h
          const scalar_t* w = Wh + r * N;
          scalar_t acc = bh[r];
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < N; ++k) acc += w[k] * y[k];
          h[r] = acc;
        }
        scalar_t* zn = zs + (b * T + t) * N;
        for (int64_t k = 0; k < N; ++k) {
          const scalar_t dt1 = dt / (1 + std::exp(-(in[k] + h[k])));
          z[k] = (1 - dt1) * z[k] + dt1 * std::tanh(in[2 * N + k] + h[2 * N + k]);
          zn[k] = z[k];
        }
        scalar_t* yn = ys + (b * T + t) * N;
        for (int64_t r = 0; r < N; ++r) {  // y from the new z (implicit-explicit)
          const scalar_t* w = Wy + r * N;
          scalar_t acc = by[r] + in[3 * N + r];
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < N; ++k) acc += w[k] * z[k];
          const scalar_t dt2 = dt / (1 + std::exp(-(in[N + r] + h[N + r])));
          yn[r] = (1 - dt2) * y[r] + dt2 * std::tanh(acc);
        }
        for (int64_t k = 0; k < N; ++k) y[k] = yn[k];
      }
    }
  });
}

std::vector<torch::Tensor> lem_forward(torch::Tensor inp, torch::Tensor Wh, torch::Tensor bh, torch::Tensor Wy,
                                       torch::Tensor by, torch::Tensor y0, torch::Tensor z0, double dt) {
  const int64_t Bt = inp.size(0), T = inp.size(1), N = Wy.size(0);
  auto ys = torch::empty({Bt, T, N}, inp.options()), zs = torch::empty({Bt, T, N}, inp.options());
  AT_DISPATCH_FLOATING_TYPES(inp.scalar_type(), "lem_forward", [&] {
    forward_kernel<scalar_t>(inp.data_ptr<scalar_t>(), Wh.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>(),
                             Wy.data_ptr<scalar_t>(), by.data_ptr<scalar_t>(), y0.data_ptr<scalar_t>(),
                             z0.data_ptr<scalar_t>(), ys.data_ptr<scalar_t>(), zs.data_ptr<scalar_t>(),
                             static_cast<scalar_t>(dt), Bt, T, N);
  });
  return {ys, zs};
}

// dt1, dt2, c, e: (B, T, N) the gates and tanh values of every step; yp, zp: (B, T, N) the previous states
template <typename scalar_t>
void backward_kernel(const scalar_t* dt1s, const scalar_t* dt2s, const scalar_t* cs, const scalar_t* es,
                     const scalar_t* yp, const scalar_t* zp, const scalar_t* Wh, const scalar_t* Wy,
                     const scalar_t* dys, const scalar_t* dzs, scalar_t* dpre, scalar_t* dy0, scalar_t* dz0,
                     scalar_t dt, int64_t Bt, int64_t T, int64_t N) {
  at::parallel_for(0, Bt, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> gy(N), gz(N);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < N; ++k) gy[k] = 0, gz[k] = 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t o = (b * T + t) * N;
        scalar_t* dp = dpre + (b * T + t) * 4 * N;  // [da1, da2, dcz, dg]
        for (int64_t k = 0; k < N; ++k) {
          const scalar_t g = gy[k] + dys[o + k], dt2 = dt2s[o + k], e = es[o + k];
          const scalar_t d_dt2 = g * (e - yp[o + k]);
          dp[3 * N + k] = g * dt2 * (1 - e * e);
          dp[N + k] = d_dt2 * dt2 * (1 - dt2 / dt);
          gy[k] = g * (1 - dt2);
        }
        for (int64_t k = 0; k < N; ++k) gz[k] += dzs[o + k];
        for (int64_t r = 0; r < N; ++r) {  // gz += W_y^T dg
          const scalar_t d = dp[3 * N + r];
          const scalar_t* w = Wy + r * N;
#pragma omp simd
          for (int64_t k = 0; k < N; ++k) gz[k] += w[k] * d;
        }
        for (int64_t k = 0; k < N; ++k) {
          const scalar_t g = gz[k], dt1 = dt1s[o + k], c = cs[o + k];
          const scalar_t d_dt1 = g * (c - zp[o + k]);
          dp[2 * N + k] = g * dt1 * (1 - c * c);
          dp[k] = d_dt1 * dt1 * (1 - dt1 / dt);
          gz[k] = g * (1 - dt1);
        }
        for (int64_t r = 0; r < 3 * N; ++r) {  // gy += W_h^T [da1, da2, dcz]
          const scalar_t d = dp[r];
          const scalar_t* w = Wh + r * N;
#pragma omp simd
          for (int64_t k = 0; k < N; ++k) gy[k] += w[k] * d;
        }
      }
      for (int64_t k = 0; k < N; ++k) dy0[b * N + k] = gy[k], dz0[b * N + k] = gz[k];
    }
  });
}

std::vector<torch::Tensor> lem_backward(torch::Tensor dt1, torch::Tensor dt2, torch::Tensor c, torch::Tensor e,
                                        torch::Tensor yp, torch::Tensor zp, torch::Tensor Wh, torch::Tensor Wy,
                                        torch::Tensor dys, torch::Tensor dzs, double dt) {
  const int64_t Bt = dt1.size(0), T = dt1.size(1), N = dt1.size(2);
  auto dpre = torch::empty({Bt, T, 4 * N}, dt1.options());
  auto dy0 = torch::empty({Bt, N}, dt1.options()), dz0 = torch::empty({Bt, N}, dt1.options());
  AT_DISPATCH_FLOATING_TYPES(dt1.scalar_type(), "lem_backward", [&] {
    backward_kernel<scalar_t>(dt1.data_ptr<scalar_t>(), dt2.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                              e.data_ptr<scalar_t>(), yp.data_ptr<scalar_t>(), zp.data_ptr<scalar_t>(),
                              Wh.data_ptr<scalar_t>(), Wy.data_ptr<scalar_t>(), dys.data_ptr<scalar_t>(),
                              dzs.data_ptr<scalar_t>(), dpre.data_ptr<scalar_t>(), dy0.data_ptr<scalar_t>(),
                              dz0.data_ptr<scalar_t>(), static_cast<scalar_t>(dt), Bt, T, N);
  });
  return {dpre, dy0, dz0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lem_forward, "LEM recurrence forward (CPU)");
  m.def("backward", &lem_backward, "LEM adjoint recurrence (CPU)");
}
