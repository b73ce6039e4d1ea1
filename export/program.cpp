// C API over ExecuTorch's Module (program.h): the one decode step shared by the C++ runner and the Python
// runtime.
#include "program.h"

#include "pages.h"

#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <cstdio>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "spinquant/checksum.h"
#include "spinquant/elementwise.h"

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::Span;

namespace {

// One memory-planned buffer, mapped anonymous: the kernel commits a page at its first write, so memory grows
// with what a run touches (one row of logits when decoding) instead of the planned upper bound (logits for
// max_seq_len rows: 113 MB of the default model's 141 MB plan). ExecuTorch's Module would zero-fill the whole
// plan, committing every page.
struct LazyBuffer {
  void* data = MAP_FAILED;
  size_t size = 0;
  explicit LazyBuffer(size_t n) : size(n) {
    if (n > 0) data = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  LazyBuffer(const LazyBuffer&) = delete;
  LazyBuffer& operator=(const LazyBuffer&) = delete;
  ~LazyBuffer() {
    if (data != MAP_FAILED) munmap(data, size);
  }
  bool ok() const { return size == 0 || data != MAP_FAILED; }
};

}  // namespace

struct SpinquantProgram {
  std::vector<std::unique_ptr<LazyBuffer>> buffers;  // the method's planned memory: outlives the module below
  std::vector<Span<uint8_t>> spans;
  std::unique_ptr<HierarchicalAllocator> planned;
  std::unique_ptr<Module> module;
  std::string method;
  int64_t vocab = 0;
};

namespace {

// The runtime's log handler for spinquant_et_log_errors_only: errors and fatal errors, as "[file:line] message".
void emit_errors_only(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                      const char* message, size_t length) {
  if (level != kError && level != kFatal) return;
  std::fprintf(stderr, "[%s:%zu] %.*s\n", filename, line, static_cast<int>(length), message);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void spinquant_et_log_errors_only(void) {
  // The runtime reports a second registration as an error, through the handler being replaced (the pybinding's
  // writes to std::cerr). Replacing it is the point here, so that one report goes nowhere.
  std::ostringstream replaced;
  std::streambuf* cerr = std::cerr.rdbuf(replaced.rdbuf());
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_errors_only, __FILE__));
  std::cerr.rdbuf(cerr);
}

__attribute__((visibility("default"))) int spinquant_et_verify(const char* path) {
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 3;
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    close(fd);
    return 3;
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (data == MAP_FAILED) return 3;
  madvise(data, size, MADV_SEQUENTIAL);
  // Each window's pages are dropped once read (a read-only file mapping: they fault back in from the file), so
  // verifying holds a few MB, not the whole program, in memory.
  const auto release = [](const uint8_t* window, size_t n) {
    spinquant_et::advise_pages_within(window, n, MADV_DONTNEED);
  };
  const auto status = spinquant::verify_artifact(static_cast<const uint8_t*>(data), size, release);
  munmap(data, size);
  return static_cast<int>(status);
}

__attribute__((visibility("default"))) SpinquantProgram* spinquant_et_open(const char* path, int* error) {
  executorch::runtime::runtime_init();
  auto program = std::make_unique<SpinquantProgram>();
  program->module = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  const Error status = program->module->load(executorch::runtime::Program::Verification::InternalConsistency);
  if (error != nullptr) *error = static_cast<int>(status);
  return status == Error::Ok ? program.release() : nullptr;
}

__attribute__((visibility("default"))) int spinquant_et_load(SpinquantProgram* program, const char* method) {
  const auto meta = program->module->method_meta(method);
  if (!meta.ok()) return static_cast<int>(meta.error());
  const auto out = meta->num_outputs() > 0 ? meta->output_tensor_meta(0) : Error::InvalidProgram;
  if (!out.ok() || out->sizes().empty()) return static_cast<int>(Error::InvalidProgram);
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    const auto size = meta->memory_planned_buffer_size(i);
    if (!size.ok()) return static_cast<int>(size.error());
    auto buffer = std::make_unique<LazyBuffer>(static_cast<size_t>(*size));
    if (!buffer->ok()) return static_cast<int>(Error::MemoryAllocationFailed);
    program->spans.emplace_back(static_cast<uint8_t*>(buffer->size ? buffer->data : nullptr), buffer->size);
    program->buffers.push_back(std::move(buffer));
  }
  program->planned =
      std::make_unique<HierarchicalAllocator>(Span<Span<uint8_t>>(program->spans.data(), program->spans.size()));
  const Error status = program->module->load_method(method, program->planned.get());
  if (status != Error::Ok) return static_cast<int>(status);
  program->method = method;
  program->vocab = out->sizes()[out->sizes().size() - 1];
  return 0;
}

__attribute__((visibility("default"))) void spinquant_et_close(SpinquantProgram* program) { delete program; }

__attribute__((visibility("default"))) int64_t spinquant_et_vocab(const SpinquantProgram* program) {
  return program->vocab;
}

__attribute__((visibility("default"))) int spinquant_et_forward(SpinquantProgram* program, const int64_t* ids,
                                                                const int64_t* pos, int64_t n, float* logits,
                                                                int64_t rows, int64_t* next) {
  if (rows > n) return static_cast<int>(Error::InvalidArgument);
  const int64_t R = rows > 0 ? rows : 1;
  std::vector<int64_t> wanted(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) wanted[r] = n - R + r;
  const auto T = static_cast<TensorImpl::SizesType>(n);
  TensorImpl::SizesType tok_sizes[2] = {1, T}, pos_sizes[1] = {T}, row_sizes[1] = {static_cast<TensorImpl::SizesType>(R)};
  TensorImpl::DimOrderType tok_order[2] = {0, 1}, pos_order[1] = {0};
  TensorImpl::StridesType tok_strides[2] = {T, 1}, pos_strides[1] = {1};
  // The runtime only reads its inputs.
  TensorImpl tok_impl(ScalarType::Long, 2, tok_sizes, const_cast<int64_t*>(ids), tok_order, tok_strides);
  TensorImpl pos_impl(ScalarType::Long, 1, pos_sizes, const_cast<int64_t*>(pos), pos_order, pos_strides);
  TensorImpl row_impl(ScalarType::Long, 1, row_sizes, wanted.data(), pos_order, pos_strides);
  auto result = program->module->execute(
      program->method, {EValue(Tensor(&tok_impl)), EValue(Tensor(&pos_impl)), EValue(Tensor(&row_impl))});
  if (!result.ok()) return static_cast<int>(result.error());
  const Tensor out = result->at(0).toTensor();
  const int64_t V = program->vocab;
  if (out.numel() != R * V) return static_cast<int>(Error::InvalidArgument);
  const float* last = out.const_data_ptr<float>() + (R - 1) * V;
  if (rows > 0) std::memcpy(logits, out.const_data_ptr<float>(), static_cast<size_t>(rows * V) * sizeof(float));
  if (next != nullptr) *next = spinquant::argmax(last, V);
  return 0;
}

__attribute__((visibility("default"))) int64_t spinquant_et_bytes(SpinquantProgram* program, const char* method,
                                                                  uint8_t* buf, int64_t cap) {
  const auto names = program->module->method_names();
  if (!names.ok() || names->count(method) == 0) return -1;
  auto result = program->module->execute(method);
  if (!result.ok() || result->empty() || !result->at(0).isTensor()) return -1;
  const Tensor out = result->at(0).toTensor();
  if (out.scalar_type() != ScalarType::Byte) return -1;
  const int64_t size = out.numel();
  if (size <= cap) std::memcpy(buf, out.const_data_ptr<uint8_t>(), static_cast<size_t>(size));
  return size;
}

}  // extern "C"
