#pragma once
// Row-major GEMMs through cuBLAS (which is column-major) on the context's handle and stream.
//
//   gemm(ta, tb, alpha, A, B, beta, C)   C = alpha op(A) op(B) + beta C
//   gemm_strided_batched(...)            the same for `batch` equally strided problems
//
// A row-major (r, c) matrix with row stride ld is, read column-major, its transpose (c, r)
// with leading dimension ld. So the row-major product C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: cuBLAS gets B first, A second, the same transpose
// flags, and the sizes (N, M, K).
//
// The compute type follows context().math(): exact (fp32 / fp64), or fp32 data on TF32 or
// bf16 tensor cores with fp32 accumulation.

#include <cublas_v2.h>

#include <type_traits>

#include "sora/cuda/context.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace detail {

template <class T>
cudaDataType_t cuda_data_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "sora's GEMMs run on float or double tensors");
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
}

template <class T>
cublasComputeType_t compute_type(Math math) {
  if constexpr (std::is_same_v<T, double>) {
    return CUBLAS_COMPUTE_64F;
  } else {
    switch (math) {
      case Math::tf32:
        return CUBLAS_COMPUTE_32F_FAST_TF32;
      case Math::bf16:
        return CUBLAS_COMPUTE_32F_FAST_16BF;
      case Math::exact:
        break;
    }
    return CUBLAS_COMPUTE_32F;
  }
}

inline cublasOperation_t op_of(bool transpose) {
  return transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
}

}  // namespace detail

// C (M, N) = alpha op(A) op(B) + beta C, op(A) (M, K), op(B) (K, N); all row-major views with
// unit column stride (any row stride). beta = 0 ignores C's contents (NaN included).
template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, ConstView<T> A, ConstView<T> B, T beta,
          DeviceView<T> C) {
  const Index M = C.rows, N = C.cols;
  const Index K = trans_a ? A.rows : A.cols;
  const Index am = trans_a ? A.cols : A.rows;
  const Index bk = trans_b ? B.cols : B.rows, bn = trans_b ? B.rows : B.cols;
  SORA_CHECK(am == M && bk == K && bn == N, "cuda::gemm: op(A) ", shape_str(am, K), " times op(B) ",
             shape_str(bk, bn), " does not give C ", shape_str(M, N));
  if (M == 0 || N == 0) return;
  Context& ctx = context();
  if (K == 0) {  // an empty sum: C = beta C
    SORA_CHECK(beta == T(0), "cuda::gemm: K = 0 with beta != 0 is not supported");
    SORA_CHECK(C.contiguous(), "cuda::gemm: K = 0 needs a contiguous C");
    SORA_CUDA_CHECK(
        cudaMemsetAsync(C.data, 0, static_cast<std::size_t>(C.size()) * sizeof(T), ctx.stream()));
    return;
  }
  const Index lda = std::max<Index>(A.stride, 1), ldb = std::max<Index>(B.stride, 1),
              ldc = std::max<Index>(C.stride, 1);
  detail::check_int_sizes("cuda::gemm", "cublasGemmEx",
                          {{"M", M}, {"N", N}, {"K", K}, {"lda", lda}, {"ldb", ldb}, {"ldc", ldc}});
  const auto type = detail::cuda_data_type<T>();
  SORA_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), detail::op_of(trans_b), detail::op_of(trans_a),
                                 static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                                 &alpha, B.data, type, static_cast<int>(ldb), A.data, type,
                                 static_cast<int>(lda), &beta, C.data, type, static_cast<int>(ldc),
                                 detail::compute_type<T>(ctx.math()), CUBLAS_GEMM_DEFAULT));
}

// `batch` problems C_i = alpha op(A_i) op(B_i) + beta C_i, with A_i = A + i stride_a (and so
// on); each operand row-major with the given row stride (ld). Sizes as in gemm: C_i (M, N),
// op(A_i) (M, K), op(B_i) (K, N).
template <class T>
void gemm_strided_batched(bool trans_a, bool trans_b, Index M, Index N, Index K, T alpha,
                          const T* A, Index lda, Index stride_a, const T* B, Index ldb,
                          Index stride_b, T beta, T* C, Index ldc, Index stride_c, Index batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  SORA_CHECK(K > 0, "cuda::gemm_strided_batched: K must be positive");
  // The batch strides are 64-bit in this call (long long); the rest are ints.
  detail::check_int_sizes(
      "cuda::gemm_strided_batched", "cublasGemmStridedBatchedEx",
      {{"M", M}, {"N", N}, {"K", K}, {"lda", lda}, {"ldb", ldb}, {"ldc", ldc}, {"batch", batch}});
  Context& ctx = context();
  const auto type = detail::cuda_data_type<T>();
  SORA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      ctx.cublas(), detail::op_of(trans_b), detail::op_of(trans_a), static_cast<int>(N),
      static_cast<int>(M), static_cast<int>(K), &alpha, B, type, static_cast<int>(ldb),
      static_cast<long long>(stride_b), A, type, static_cast<int>(lda),
      static_cast<long long>(stride_a), &beta, C, type, static_cast<int>(ldc),
      static_cast<long long>(stride_c), static_cast<int>(batch),
      detail::compute_type<T>(ctx.math()), CUBLAS_GEMM_DEFAULT));
}

}  // namespace sora::cuda
