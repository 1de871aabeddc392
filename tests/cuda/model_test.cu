// Placeholder: filled in by the CUDA-twin work (issue 9).
#include <doctest/doctest.h>
