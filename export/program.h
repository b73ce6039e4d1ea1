// C API of libspinquant_et_ops over ExecuTorch's Module: open a .pte, load its forward, run forward(tokens [1, T] int64,
// input_pos [T] int64, logit_rows [R] int64) -> logits [1, R, V], read its constant methods, close it; and the tokenizer a
// program carries. The C++ runner and the Python runtime (through ctypes) both call it, so both run the same
// decode step; the pybinding's per-call tensor handling cost ~6 % of a decode step.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct SpinquantProgram SpinquantProgram;

// Thread count of the spinquant kernels (0 = every core).
void spinquant_et_set_threads(int threads);

// Routes the runtime's log through a handler that prints errors and drops informational lines (thread pool
// and CPU probing). Call after anything else that sets the runtime's log handler (the Python pybinding does).
void spinquant_et_log_errors_only(void);

// Drops the weights the op library prepacked (call when the program that owns their constant data is released).
void spinquant_et_clear_cache(void);

// Checks the checksum a program records in its metadata against the whole file (spinquant/checksum.h), before
// anything parses it: 0 verified, 1 no checksum recorded (the caller decides), 2 damaged, 3 unreadable.
int spinquant_et_verify(const char* path);

// Opens the program at `path` (mapped, not read); NULL if it cannot, with the runtime's error code in `*error`
// (when not NULL): missing file, not a program, truncated.
SpinquantProgram* spinquant_et_open(const char* path, int* error);

// Loads `method` for spinquant_et_forward, its planned memory committed page by page as runs touch it. Returns 0
// or the runtime's error code (OperatorMissing, 0x14, when an operator is not registered in this process: the
// runtime logged which).
int spinquant_et_load(SpinquantProgram* program, const char* method);

void spinquant_et_close(SpinquantProgram* program);

// Vocabulary size: the last dimension of the method's first output.
int64_t spinquant_et_vocab(const SpinquantProgram* program);

// Runs the method on `n` token ids at positions `pos`, asking for the logits of the last max(rows, 1) positions
// only (the program's lm_head runs for those rows). Copies the `rows` rows of logits to `logits` (when rows > 0)
// and stores the argmax of the last row in `*next` (when not NULL). Returns 0 or the runtime's error code
// (InvalidArgument when rows > n).
int spinquant_et_forward(SpinquantProgram* program, const int64_t* ids, const int64_t* pos, int64_t n,
                         float* logits, int64_t rows, int64_t* next);

// Runs a constant method of the program that returns a uint8 tensor (`spinquant_metadata`: JSON;
// `spinquant_tokenizer`: docs/TOKENIZER_FORMAT.md) and copies it to `buf` when it fits in `cap` bytes. Returns
// its size, or -1 if the program has no such method.
int64_t spinquant_et_bytes(SpinquantProgram* program, const char* method, uint8_t* buf, int64_t cap);

// ---- tokenizer (export/tokenizer.h): byte-level BPE from the packed bytes of `spinquant_tokenizer` ----

typedef struct SpinquantTokenizer SpinquantTokenizer;

// Parses a packed tokenizer; NULL if the bytes are not one (damaged, or another format version).
SpinquantTokenizer* spinquant_tok_new(const uint8_t* data, int64_t size);

void spinquant_tok_free(SpinquantTokenizer* tok);

// Token ids of UTF-8 `text` (`len` bytes), with the tokenizer's BOS-style prefix and suffix. Returns how many;
// copies them to `ids` only when they fit in `cap`.
int64_t spinquant_tok_encode(const SpinquantTokenizer* tok, const char* text, int64_t len, int64_t* ids, int64_t cap);

// Points `*bytes` at the bytes of token `id` (valid while `tok` lives) and returns their count (0 for special
// tokens and unknown ids). Concatenated, a generation's bytes are its UTF-8 text.
int64_t spinquant_tok_decode(const SpinquantTokenizer* tok, int64_t id, const char** bytes);

// The end-of-sequence id, or -1.
int64_t spinquant_tok_eos(const SpinquantTokenizer* tok);

#ifdef __cplusplus
}
#endif
