// LibTorch operations that tch 0.22 does not bind, called from `libtorch.rs`, `adamw.rs` and
// `profiler.rs` (feature `tch`; compiled by the crate's build.rs against the LibTorch torch-sys
// links).
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`). Every function returns 0, or 1
// with the exception's message copied into `err`.

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <array>
#include <cstring>
#include <exception>
#include <memory>
#include <string_view>
#include <vector>

namespace {

void set_error(char *err, size_t len, const char *what) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, what, len - 1);
  err[len - 1] = '\0';
}

}  // namespace

extern "C" {

// `at::convolution_backward` of a non-transposed 2-D convolution, as PyTorch's autograd calls
// it: `bias_len` < 0 when there is no bias. `out[i]` receives a new tensor where `mask[i]`, and
// is left untouched otherwise (input, weight, bias).
int ovkd_conv2d_backward(const at::Tensor *grad, const at::Tensor *input,
                         const at::Tensor *weight, int64_t bias_len, const int64_t *stride,
                         const int64_t *padding, const int64_t *dilation, int64_t groups,
                         const int *mask, at::Tensor **out, char *err, size_t err_len) {
  try {
    std::vector<int64_t> bias_sizes{bias_len};
    at::OptionalIntArrayRef bias = std::nullopt;
    if (bias_len >= 0) bias = at::IntArrayRef(bias_sizes);
    std::array<bool, 3> m{mask[0] != 0, mask[1] != 0, mask[2] != 0};
    const std::vector<int64_t> output_padding{0, 0};
    auto r = at::convolution_backward(*grad, *input, *weight, bias, at::IntArrayRef(stride, 2),
                                      at::IntArrayRef(padding, 2), at::IntArrayRef(dilation, 2),
                                      false, output_padding, groups, m);
    if (m[0]) out[0] = new at::Tensor(std::get<0>(r));
    if (m[1]) out[1] = new at::Tensor(std::get<1>(r));
    if (m[2]) out[2] = new at::Tensor(std::get<2>(r));
    return 0;
  } catch (const std::exception &e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// One AdamW step of one parameter, in place, by PyTorch's fused kernel (`torch.optim.AdamW(...,
// fused=True)`): `step` is the 1-based step count, as PyTorch's own step tensor holds it when
// the kernel runs.
int ovkd_fused_adamw_(at::Tensor *param, const at::Tensor *grad, at::Tensor *exp_avg,
                      at::Tensor *exp_avg_sq, double step, double lr, double beta1, double beta2,
                      double weight_decay, double eps, char *err, size_t err_len) {
  try {
    std::vector<at::Tensor> params{*param}, grads{*grad}, m{*exp_avg}, v{*exp_avg_sq};
    std::vector<at::Tensor> steps{at::full({}, step, param->options().dtype(at::kFloat))};
    at::_fused_adamw_(params, grads, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception &e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Starts PyTorch's Kineto profiler (what `torch.profiler.profile` runs) on the calling thread:
// host operators, and CUDA kernels and copies when `cuda` is non-zero.
int ovkd_profiler_start(int cuda, char *err, size_t err_len) {
  try {
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    using torch::profiler::impl::ProfilerState;
    prof::ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda != 0) activities.insert(ActivityType::CUDA);
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception &e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Stops the profiler and writes its Chrome trace (`chrome://tracing`, Perfetto) to `path`.
int ovkd_profiler_stop(const char *path, char *err, size_t err_len) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (!result) throw std::runtime_error("the profiler was not running");
    result->save(path);
    return 0;
  } catch (const std::exception &e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Opens a named range of host time in the running profiler's trace (`record_function`), or
// returns null when no profiler records this thread. `name` must outlive the range.
void *ovkd_range_start(const char *name, size_t len) {
  try {
    auto range = std::make_unique<at::RecordFunction>(at::RecordScope::USER_SCOPE);
    if (!range->isActive()) return nullptr;
    range->before(std::string_view(name, len), c10::ArrayRef<const c10::IValue>{});
    return range.release();
  } catch (const std::exception &) {
    return nullptr;
  }
}

// Closes a range `ovkd_range_start` opened.
void ovkd_range_end(void *range) { delete static_cast<at::RecordFunction *>(range); }

}  // extern "C"
