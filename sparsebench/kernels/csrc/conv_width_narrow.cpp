// The width kernels of conv_width.cpp built at 8 lanes, for the avx512 build: conv_width.cpp sends
// rows of at most 8 output columns here, where its 16-lane vectors would be half empty or worse.
// Empty in the other builds (their vectors are 8 lanes or fewer already).
#if defined(__AVX512F__)
#define SB_CONV_LANES 8
#define SB_WIDTH_ENTRY(name) name##_narrow
#define SB_WIDTH_SENDS_NARROW_ROWS 0
#include "conv_width.cpp"
#endif
