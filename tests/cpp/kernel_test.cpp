// The torch-free CPU kernels on their own: every ISA this CPU runs, every dtype, the
// three schedules (rows in cache, columns, middle axis) on outputs of 8 MiB and more, at an
// aligned and an odd address. Written with ordinary stores, with non-temporal ones and
// into fresh pages populated ahead of the stores (OutputWrite), the results must be
// bit-identical, and they must match a float64 reference. Also checks populate_for_write
// itself: the pages it maps are resident and read back as zero. Ends with the line "N passed, M failed"; exits non-zero on a failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <sys/mman.h>

#include "../../csrc/kernels.h"

using namespace fastwn;

namespace {

void serial(int64_t n, int64_t, void* ctx, cpu::TaskBody body) { body(ctx, 0, n); }

// Storage <-> double, written independently of the kernels' vec.h.
size_t elem_size(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
double load(const unsigned char* p, DType t) {
  switch (t) {
    case DType::f32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::f64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::bf16: { uint32_t u = uint32_t(p[0] | (p[1] << 8)) << 16; float f; std::memcpy(&f, &u, 4); return f; }
    case DType::f16: { _Float16 h; std::memcpy(&h, p, 2); return double(h); }
  }
  return 0;
}
void store(unsigned char* p, DType t, double x) {
  switch (t) {
    case DType::f32: { float f = float(x); std::memcpy(p, &f, 4); return; }
    case DType::f64: std::memcpy(p, &x, 8); return;
    case DType::bf16: {  // truncation is fine for inputs
      float f = float(x); uint32_t u; std::memcpy(&u, &f, 4); p[0] = (u >> 16) & 0xFF; p[1] = u >> 24; return;
    }
    case DType::f16: { _Float16 h = _Float16(x); std::memcpy(p, &h, 2); return; }
  }
}

// One extra element so that `odd` views start one element in. `fresh`: freshly mapped
// pages that no one has touched, as glibc hands out for a large tensor.
struct Buffer {
  unsigned char* base;
  size_t size;
  bool fresh;
  DType t;
  size_t offset;
  Buffer(size_t n, DType t_, bool odd, bool fresh_ = false) : size((n + 1) * elem_size(t_) + 64), fresh(fresh_), t(t_) {
    if (fresh) {
      void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      base = m == MAP_FAILED ? nullptr : static_cast<unsigned char*>(m);
    } else {
      base = new unsigned char[size]();
    }
    if (base == nullptr) std::abort();
    const uintptr_t b = reinterpret_cast<uintptr_t>(base);
    offset = (64 - b % 64) % 64 + (odd ? elem_size(t) : 0);  // 64-aligned, then maybe one element in
  }
  Buffer(const Buffer&) = delete;
  ~Buffer() { fresh ? (void)munmap(base, size) : delete[] base; }
  unsigned char* ptr() { return base + offset; }
  double at(size_t i) { return load(ptr() + i * elem_size(t), t); }
  void set(size_t i, double x) { store(ptr() + i * elem_size(t), t, x); }
};

void forward(cpu::Isa isa, const FwdParams& p) {
  switch (isa) {
    case cpu::Isa::avx512: return cpu::avx512::forward(p, serial);
    case cpu::Isa::avx2: return cpu::avx2::forward(p, serial);
    case cpu::Isa::scalar: return cpu::scalar::forward(p, serial);
  }
}
void backward(cpu::Isa isa, const BwdParams& p) {
  switch (isa) {
    case cpu::Isa::avx512: return cpu::avx512::backward(p, serial);
    case cpu::Isa::avx2: return cpu::avx2::backward(p, serial);
    case cpu::Isa::scalar: return cpu::scalar::backward(p, serial);
  }
}

int passed = 0, failed = 0;
void expect(bool ok, const char* what, const char* isa, int dtype, const Shape3& s, bool odd) {
  ok ? ++passed : ++failed;
  if (!ok)
    std::printf("FAIL %s: isa %s dtype %d shape [%ld, %ld, %ld] odd %d\n", what, isa, dtype, long(s.outer), long(s.D),
                long(s.inner), int(odd));
}

void check(cpu::Isa isa, DType t, Shape3 s, bool odd) {
  const size_t n = size_t(s.numel()), D = size_t(s.D);
  const bool wide = t == DType::f64;
  const DType nt = wide ? DType::f64 : DType::f32;  // norm dtype
  std::mt19937_64 rng(1234 + n);
  std::normal_distribution<double> normal;
  Buffer v(n, t, odd), gw(n, t, odd), g(D, t, false);
  for (size_t i = 0; i < n; ++i) v.set(i, normal(rng)), gw.set(i, normal(rng));
  for (size_t d = 0; d < D; ++d) g.set(d, normal(rng));
  const OutputWrite modes[] = {OutputWrite::cached, OutputWrite::streamed, OutputWrite::populate};
  const bool fresh = true;  // the populate mode's outputs
  Buffer w[3] = {Buffer(n, t, odd), Buffer(n, t, odd), Buffer(n, t, odd, fresh)};
  Buffer gv[3] = {Buffer(n, t, odd), Buffer(n, t, odd), Buffer(n, t, odd, fresh)};
  Buffer norm[3] = {Buffer(D, nt, false), Buffer(D, nt, false), Buffer(D, nt, false)};
  Buffer gg[3] = {Buffer(D, t, false), Buffer(D, t, false), Buffer(D, t, false)};
  for (int m = 0; m < 3; ++m) {
    FwdParams fp{s, t, v.ptr(), g.ptr(), w[m].ptr(), norm[m].ptr(), 0.0};
    fp.write_w = modes[m];
    forward(isa, fp);
    BwdParams bp{s, t, gw.ptr(), v.ptr(), g.ptr(), norm[m].ptr(), gv[m].ptr(), gg[m].ptr(), 0.0};
    bp.write_grad_v = modes[m];
    backward(isa, bp);
  }
  const char* name = cpu::isa_name(isa);
  const size_t bytes = n * elem_size(t);
  for (int m = 1; m < 3; ++m) {
    const char* how = m == 1 ? "streamed" : "populated";
    char what[64];
    std::snprintf(what, sizeof what, "w %s == stored", how);
    expect(std::memcmp(w[0].ptr(), w[m].ptr(), bytes) == 0, what, name, int(t), s, odd);
    std::snprintf(what, sizeof what, "grad_v %s == stored", how);
    expect(std::memcmp(gv[0].ptr(), gv[m].ptr(), bytes) == 0, what, name, int(t), s, odd);
    std::snprintf(what, sizeof what, "norm %s == stored", how);
    expect(std::memcmp(norm[0].ptr(), norm[m].ptr(), D * elem_size(nt)) == 0, what, name, int(t), s, odd);
    std::snprintf(what, sizeof what, "grad_g %s == stored", how);
    expect(std::memcmp(gg[0].ptr(), gg[m].ptr(), D * elem_size(t)) == 0, what, name, int(t), s, odd);
  }

  // float64 reference: norms and dot products per d, then sampled elements.
  std::vector<double> sumsq(D, 0.0), dot(D, 0.0);
  auto d_of = [&](size_t i) { return (i / size_t(s.inner)) % D; };
  for (size_t i = 0; i < n; ++i) {
    const double x = v.at(i);
    sumsq[d_of(i)] += x * x;
    dot[d_of(i)] += gw.at(i) * x;
  }
  const double tol = t == DType::f64 ? 1e-12 : t == DType::f32 ? 1e-5 : 1e-2;
  double worst_norm = 0, worst_w = 0, worst_gg = 0;
  for (size_t d = 0; d < D; ++d) {
    const double nrm = std::sqrt(sumsq[d]);
    worst_norm = std::max(worst_norm, std::abs(norm[1].at(d) - nrm) / nrm);
    const double gg_ref = dot[d] / nrm, gg_scale = std::sqrt(sumsq[d]) * std::sqrt(double(n / D)) / nrm;
    worst_gg = std::max(worst_gg, std::abs(gg[1].at(d) - gg_ref) / gg_scale);
  }
  for (size_t i = 0; i < n; i += 997) {
    const size_t d = d_of(i);
    const double ref = g.at(d) * v.at(i) / std::sqrt(sumsq[d]);
    worst_w = std::max(worst_w, std::abs(w[1].at(i) - ref) / (std::abs(g.at(d)) / std::sqrt(sumsq[d]) * 4.0));
  }
  expect(worst_norm < (t == DType::f64 ? 1e-13 : 1e-5), "norm vs float64", name, int(t), s, odd);
  expect(worst_w < tol, "w vs float64", name, int(t), s, odd);
  expect(worst_gg < tol, "grad_g vs float64", name, int(t), s, odd);
}

// populate_for_write on fresh pages: every page holding a byte of the range is mapped
// afterwards, pages outside it are not, and memory reads back as zero; on resident
// memory it changes nothing.
void check_populate() {
  const size_t page = 4096, pages = 64, bytes = pages * page;
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) std::abort();
  unsigned char* p = static_cast<unsigned char*>(m);
  const Shape3 none{0, 0, 0};
  expect(!cpu::resident(p, int64_t(bytes)), "fresh pages are not resident", "-", 0, none, false);
  // Bytes [3 pages + 100, 40 pages - 7): pages 3 to 39 hold them.
  cpu::populate_for_write(p + 3 * page + 100, int64_t(37 * page - 107));
  expect(cpu::resident(p + 3 * page, int64_t(37 * page)), "populated pages are resident", "-", 0, none, false);
  expect(!cpu::resident(p + 2 * page, 1) && !cpu::resident(p + 40 * page, 1), "pages outside stay absent", "-", 0,
         none, false);
  bool zero = true;
  for (size_t i = 0; i < bytes; ++i) zero = zero && p[i] == 0;
  expect(zero, "populated memory reads zero", "-", 0, none, false);
  std::memset(p, 0x5A, bytes);
  cpu::populate_for_write(p, int64_t(bytes));
  bool kept = true;
  for (size_t i = 0; i < bytes; ++i) kept = kept && p[i] == 0x5A;
  expect(kept, "populating resident memory keeps it", "-", 0, none, false);
  munmap(m, bytes);
}

}  // namespace

int main() {
  check_populate();
  // >= 8 MiB of output in every dtype (4.2M elements): rows, columns, a middle axis.
  const Shape3 shapes[] = {{1, 1031, 4099}, {2053, 2051, 1}, {5, 211, 3989}};
  for (cpu::Isa isa : {cpu::Isa::scalar, cpu::Isa::avx2, cpu::Isa::avx512}) {
    if (isa > cpu::best_supported_isa()) continue;
    for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16})
      for (const Shape3& s : shapes)
        for (bool odd : {false, true}) check(isa, t, s, odd);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
