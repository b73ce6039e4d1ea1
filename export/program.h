// C API of libspinquant_et_ops over ExecuTorch's Module: open a .pte, run forward(tokens [1, T] int64,
// input_pos [T] int64) -> logits [1, T, V] (or [1, V]), close it. The C++ runner and the Python runtime
// (through ctypes) both call it, so both run the same decode step; the pybinding's per-call tensor handling
// cost ~6 % of a decode step here (benchmarks/RESULTS.md, session 9).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct SpinquantProgram SpinquantProgram;

// Thread count of the spinquant kernels (0 = every core).
void spinquant_et_set_threads(int threads);

// Drops the weights the op library prepacked (call when the program that owns their constant data is released).
void spinquant_et_clear_cache(void);

// Loads `method` of the program at `path`; NULL if it cannot (the runtime logged why: missing file, not a
// program, or an operator this process has not registered).
SpinquantProgram* spinquant_et_open(const char* path, const char* method);

void spinquant_et_close(SpinquantProgram* program);

// Vocabulary size: the last dimension of the method's first output.
int64_t spinquant_et_vocab(const SpinquantProgram* program);

// Runs the method on `n` token ids at positions `pos`. Copies the last `rows` rows of logits to `logits` (when
// rows > 0) and stores the argmax of the last row in `*next` (when not NULL). Returns 0 or the runtime's
// error code.
int spinquant_et_forward(SpinquantProgram* program, const int64_t* ids, const int64_t* pos, int64_t n,
                         float* logits, int64_t rows, int64_t* next);

#ifdef __cplusplus
}
#endif
