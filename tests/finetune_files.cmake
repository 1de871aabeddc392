# sora-finetune as a user runs it: --help, errors on bad flags, a tiny --compare run with the
# sparsity schedule whose output folder Python's standard library checks, and a second run that
# must reuse the cached pretrained model.
set(_ft_out "${CMAKE_CURRENT_BINARY_DIR}/finetune-tiny")
set(_ft_gpu "${CMAKE_CURRENT_BINARY_DIR}/finetune-tiny-cuda")
set(_ft_tiny --plain --seeds 2 --train-size 96 --val-size 48 --test-size 48 --width 16 --layers 2
             --heads 2 --pretrain-steps 10 --pretrain-batch 4 --corpus-tokens 4000 --epochs 2
             --batch-size 16 --xi 0.05 --stages 2 --xi0 0.01 --xi-max 0.1 --dense-epochs 1
             --stage-epochs 1)

# Output tests check the exit status too (sora_add_output_test, tests/CMakeLists.txt): 0 for
# a run, a non-zero status from a normal exit (not a crash) for an error.
sora_add_output_test("finetune: --help lists the flags"
  REGEX "--sparsity-schedule.*--threads.*--adalora-target-rank"
  COMMAND $<TARGET_FILE:sora-finetune> --help)
sora_add_output_test("finetune: a bad value names its flag" REGEX "--method: .*qlora" EXPECT error
  COMMAND $<TARGET_FILE:sora-finetune> --method qlora)
add_test(NAME "finetune: a bad value exits non-zero" COMMAND sora-finetune --rank 0)
set_tests_properties("finetune: a bad value exits non-zero" PROPERTIES WILL_FAIL TRUE)
add_test(NAME "finetune: an unknown flag exits non-zero" COMMAND sora-finetune --bogus)
set_tests_properties("finetune: an unknown flag exits non-zero" PROPERTIES WILL_FAIL TRUE)

add_test(NAME "finetune: tiny compare run"
         COMMAND ${CMAKE_COMMAND} -E rm -rf "${_ft_out}" "${_ft_out}-again" "${_ft_gpu}")
sora_add_output_test("finetune: tiny compare run (train)"
  REGEX "pretrained model: training.*method.*adalora.*report: "
  COMMAND $<TARGET_FILE:sora-finetune> ${_ft_tiny} --compare --sparsity-schedule --out "${_ft_out}")
set_tests_properties("finetune: tiny compare run" PROPERTIES FIXTURES_SETUP sora_ft_clean)
set_tests_properties("finetune: tiny compare run (train)" PROPERTIES
  FIXTURES_REQUIRED sora_ft_clean FIXTURES_SETUP sora_ft_out)
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  sora_add_output_test("finetune: python stdlib checks the output folder and the PEFT adapters"
    REGEX "^OK: "
    COMMAND $<TARGET_FILE:Python3::Interpreter> "${CMAKE_CURRENT_SOURCE_DIR}/finetune_check_output.py"
            "${_ft_out}")
  set_tests_properties("finetune: python stdlib checks the output folder and the PEFT adapters"
                       PROPERTIES FIXTURES_REQUIRED sora_ft_out)
endif()
sora_add_output_test("finetune: a second run reuses the cached pretrained model"
  REGEX "pretrained model: reusing the cached"
  COMMAND $<TARGET_FILE:sora-finetune> ${_ft_tiny} --method lora --out "${_ft_out}-again"
          --cache-dir "${_ft_out}/cache")
set_tests_properties("finetune: a second run reuses the cached pretrained model" PROPERTIES
  FIXTURES_REQUIRED sora_ft_out)

# --device cuda. Where nvcc built the program's GPU runs: every method trains on the GPU and the
# output folder passes the same checks; a machine without a GPU reports the test as skipped
# (the program's error names the cause). Without the CUDA backend the error must say so.
if(TARGET sora::cuda)
  sora_add_output_test("finetune: tiny compare run on the GPU (train)"
    REGEX "device: cuda.*pretrained model: training.*method.*adalora.*report: "
    SKIP_REGEX "no CUDA device is available"
    COMMAND $<TARGET_FILE:sora-finetune> ${_ft_tiny} --compare --sparsity-schedule --device cuda
            --out "${_ft_gpu}")
  set_tests_properties("finetune: tiny compare run on the GPU (train)" PROPERTIES
    FIXTURES_REQUIRED sora_ft_clean FIXTURES_SETUP sora_ft_gpu_out)
  if(Python3_Interpreter_FOUND)
    sora_add_output_test("finetune: python stdlib checks the GPU run's output folder"
      REGEX "^OK: " SKIP_CODE 77
      COMMAND $<TARGET_FILE:Python3::Interpreter>
              "${CMAKE_CURRENT_SOURCE_DIR}/finetune_check_output.py" "${_ft_gpu}" cuda)
    set_tests_properties("finetune: python stdlib checks the GPU run's output folder" PROPERTIES
      FIXTURES_REQUIRED sora_ft_gpu_out)
  endif()
else()
  sora_add_output_test("finetune: --device cuda in a build without CUDA says so"
    REGEX "built without the CUDA backend" EXPECT error
    COMMAND $<TARGET_FILE:sora-finetune> --device cuda --out "${_ft_out}-no-cuda")
endif()

# Issue 19, "nothing lost, nothing hung": each probe of finetune_robust.py runs the program the
# way a reliability engineer would (diverging flags, a locked folder, FIFOs and devices as
# inputs, a file-size limit, SIGTERM, everything pruned, bad flags and paths, a killed run's
# leftovers) and checks the clear error and that earlier outputs are byte-identical.
if(Python3_Interpreter_FOUND)
  foreach(_probe diverged lock special-inputs file-size-limit all-pruned leftovers sigterm
                 bad-flags-and-paths inspect)
    sora_add_output_test("finetune robustness: ${_probe}" REGEX "^OK: "
      COMMAND $<TARGET_FILE:Python3::Interpreter> "${CMAKE_CURRENT_SOURCE_DIR}/finetune_robust.py"
              $<TARGET_FILE:sora-finetune> "${CMAKE_CURRENT_BINARY_DIR}/finetune-robust" ${_probe})
    set_tests_properties("finetune robustness: ${_probe}" PROPERTIES TIMEOUT 600)
  endforeach()
endif()
