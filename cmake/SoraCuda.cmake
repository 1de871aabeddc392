# Optional CUDA backend. AUTO turns it on wherever nvcc is found (so CI compiles the CUDA
# code on machines without a GPU); ON fails loudly without nvcc; OFF never looks.
include(CheckLanguage)

macro(sora_setup_cuda)
  set(SORA_HAS_CUDA OFF)
  string(TOUPPER "${SORA_ENABLE_CUDA}" _sora_cuda_mode)
  if(NOT _sora_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "SORA_ENABLE_CUDA must be AUTO, ON or OFF, not '${SORA_ENABLE_CUDA}'")
  endif()
  if(NOT _sora_cuda_mode STREQUAL "OFF")
    if(NOT CMAKE_CUDA_COMPILER)
      check_language(CUDA)
    endif()
    if(CMAKE_CUDA_COMPILER)
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
        # Ampere and Hopper (sm_90: H100/H200); override with -DCMAKE_CUDA_ARCHITECTURES=...
        set(CMAKE_CUDA_ARCHITECTURES "80;90")
      endif()
      enable_language(CUDA)
      # CMake < 3.26 has no C++20 entry for nvcc, although nvcc >= 12 supports -std=c++20:
      # teach it, so that cuda_std_20 (and CUDA_STANDARD 20) work with the CMake of Debian 12.
      if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND
         CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0 AND
         NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
        set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
        set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
        list(APPEND CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
        list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
      endif()
      find_package(CUDAToolkit REQUIRED)
      add_library(sora_cuda INTERFACE)
      add_library(sora::cuda ALIAS sora_cuda)
      set_target_properties(sora_cuda PROPERTIES EXPORT_NAME cuda)
      target_link_libraries(sora_cuda INTERFACE sora CUDA::cudart CUDA::cublas)
      target_compile_features(sora_cuda INTERFACE cuda_std_20)
      # sora/cuda/ uses Eigen on the host side only; without EIGEN_NO_CUDA, Eigen 3.4 tags its
      # functions __host__ __device__ and nvcc warns on its defaulted members (#20012).
      target_compile_definitions(sora_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
      set(SORA_HAS_CUDA ON)
      message(STATUS "sora: CUDA backend enabled (${CMAKE_CUDA_COMPILER}, archs ${CMAKE_CUDA_ARCHITECTURES})")
    elseif(_sora_cuda_mode STREQUAL "ON")
      message(FATAL_ERROR "SORA_ENABLE_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER or put nvcc on PATH)")
    else()
      message(STATUS "sora: no CUDA compiler found, CUDA backend disabled")
    endif()
  endif()
endmacro()
