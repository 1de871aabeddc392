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
# Non-zero by a normal exit that names the flag (WILL_FAIL alone would pass a crash too).
sora_add_output_test("finetune: a bad value exits non-zero" REGEX "rank" EXPECT error
  COMMAND $<TARGET_FILE:sora-finetune> --rank 0)
sora_add_output_test("finetune: an unknown flag exits non-zero" REGEX "bogus" EXPECT error
  COMMAND $<TARGET_FILE:sora-finetune> --bogus)

# Set-up of the runs below: their folders removed, and checked gone (a folder that cannot be
# removed fails here instead of leaving an old run's files for the checks to read).
add_test(NAME "finetune: tiny compare run"
         COMMAND sh -c "rm -rf \"$0\" \"$1\" \"$2\" && ! test -e \"$0\" && ! test -e \"$1\" && ! test -e \"$2\""
                 "${_ft_out}" "${_ft_out}-again" "${_ft_gpu}")
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
  foreach(_probe diverged lock special-inputs file-size-limit all-pruned leftovers sigterm resume
                 bad-flags-and-paths inspect)
    sora_add_output_test("finetune robustness: ${_probe}" REGEX "^OK: "
      COMMAND $<TARGET_FILE:Python3::Interpreter> "${CMAKE_CURRENT_SOURCE_DIR}/finetune_robust.py"
              $<TARGET_FILE:sora-finetune> "${CMAKE_CURRENT_BINARY_DIR}/finetune-robust" ${_probe})
    set_tests_properties("finetune robustness: ${_probe}" PROPERTIES TIMEOUT 600)
  endforeach()
endif()

# --model DIR: a tiny random BERT folder (made by transformers and tokenizers) fine-tuned with
# every method on the embedded task, then each exported adapter loaded by PEFT on transformers'
# model of the same folder, which must compute the logits sora recorded.
if(TARGET sora::text)
  set(_ft_hf_model "${CMAKE_CURRENT_BINARY_DIR}/finetune-tiny-bert")
  set(_ft_hf_out "${CMAKE_CURRENT_BINARY_DIR}/finetune-model-tiny")
  add_test(NAME "finetune --model: clean"
           COMMAND ${CMAKE_COMMAND} -E rm -rf "${_ft_hf_model}" "${_ft_hf_out}"
                   "${_ft_hf_out}-accum" "${_ft_hf_out}-sparsity"
                   "${_ft_hf_out}-files")
  add_test(NAME "finetune --model: mkdir" COMMAND ${CMAKE_COMMAND} -E make_directory
                                                  "${_ft_hf_model}")
  sora_add_python_test("finetune --model: make a tiny BERT folder"
                       "${CMAKE_CURRENT_SOURCE_DIR}/finetune/make_tiny_bert.py" "${_ft_hf_model}")
  add_test(NAME "finetune --model: tiny BERT compare run"
           COMMAND sora-finetune --model "${_ft_hf_model}" --compare --plain --seeds 1
                   --train-size 96 --val-size 48 --test-size 48 --epochs 2 --batch-size 16
                   --max-length 32 --lr 0.05 --full-lr 0.01 --out "${_ft_hf_out}")
  sora_add_python_test("finetune --model: PEFT loads the adapters and computes sora's logits"
                       "${CMAKE_CURRENT_SOURCE_DIR}/finetune/check_peft_load.py" "${_ft_hf_model}"
                       "${_ft_hf_out}")
  set_tests_properties("finetune --model: clean" PROPERTIES FIXTURES_SETUP sora_ft_hf_clean)
  set_tests_properties("finetune --model: mkdir" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_clean FIXTURES_SETUP sora_ft_hf_dir)
  set_tests_properties("finetune --model: make a tiny BERT folder" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_dir FIXTURES_SETUP sora_ft_hf_model
    PASS_REGULAR_EXPRESSION "OK: ")
  set_tests_properties("finetune --model: tiny BERT compare run" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_model FIXTURES_SETUP sora_ft_hf_out
    PASS_REGULAR_EXPRESSION "model: .*\\(bert\\).*method.*adalora.*report: ")
  set_tests_properties("finetune --model: PEFT loads the adapters and computes sora's logits"
    PROPERTIES FIXTURES_REQUIRED "sora_ft_hf_model;sora_ft_hf_out" PASS_REGULAR_EXPRESSION "OK: 3 ")
  # --save-every / SIGINT / --resume on the pre-trained model, through --grad-accum.
  sora_add_output_test("finetune --model: a resumed run equals the uninterrupted one"
    REGEX "^OK: "
    COMMAND $<TARGET_FILE:Python3::Interpreter> "${CMAKE_CURRENT_SOURCE_DIR}/finetune_robust.py"
            $<TARGET_FILE:sora-finetune> "${CMAKE_CURRENT_BINARY_DIR}/finetune-robust"
            resume-model "${_ft_hf_model}")
  set_tests_properties("finetune --model: a resumed run equals the uninterrupted one" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_model TIMEOUT 600)
  # --grad-checkpoint: every method's results equal the plain run's, bit for bit.
  sora_add_output_test("finetune --model: --grad-checkpoint computes what the plain run does"
    REGEX "^OK: "
    COMMAND $<TARGET_FILE:Python3::Interpreter> "${CMAKE_CURRENT_SOURCE_DIR}/finetune_robust.py"
            $<TARGET_FILE:sora-finetune> "${CMAKE_CURRENT_BINARY_DIR}/finetune-robust"
            grad-checkpoint-model "${_ft_hf_model}")
  set_tests_properties("finetune --model: --grad-checkpoint computes what the plain run does"
    PROPERTIES FIXTURES_REQUIRED sora_ft_hf_model TIMEOUT 600)
  # Algorithm 1 on the pre-trained model: a dense phase and two xi stages, each row reported.
  sora_add_output_test("finetune --model: the sparsity schedule walks its stages"
    REGEX "stage 2  xi 0.008 .*report: .*sparsity.svg"
    COMMAND $<TARGET_FILE:sora-finetune> --model "${_ft_hf_model}" --method sora --sparsity-schedule --plain
            --seeds 1 --train-size 64 --val-size 32 --test-size 32 --epochs 1 --batch-size 16
            --max-length 32 --lr 0.05 --dense-epochs 1 --stage-epochs 1 --stages 2
            --out "${_ft_hf_out}-sparsity")
  set_tests_properties("finetune --model: the sparsity schedule walks its stages" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_model)
  # Data files of one's own: a TSV training file and a JSONL validation file, class names as
  # labels, renamed columns.
  sora_add_output_test("finetune --model: TSV and JSONL data files with named columns"
    REGEX "task reviews_train .*0 = negative, 1 = positive.*48 train / 16 validation.*lora +(0\\.[6-9]|1\\.0)"
    COMMAND $<TARGET_FILE:sora-finetune> --model "${_ft_hf_model}" --method lora --plain --seeds 1
            --train-file "${CMAKE_CURRENT_SOURCE_DIR}/finetune/data/reviews_train.tsv"
            --val-file "${CMAKE_CURRENT_SOURCE_DIR}/finetune/data/reviews_dev.jsonl"
            --text-column sentence --label-column sentiment --epochs 8 --batch-size 8
            --max-length 16 --lr 0.05 --out "${_ft_hf_out}-files")
  set_tests_properties("finetune --model: TSV and JSONL data files with named columns" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_model)
  add_test(NAME "finetune --model: --device cuda is refused up front"
           COMMAND sora-finetune --model "${CMAKE_CURRENT_SOURCE_DIR}" --device cuda)
  set_tests_properties("finetune --model: --device cuda is refused up front" PROPERTIES
    PASS_REGULAR_EXPRESSION "--device cuda: --model fine-tunes on the CPU only")
endif()
if(TARGET sora::text)
  # --grad-accum 2: 96 examples in batches of 16 are 6 batches, 3 optimizer steps an epoch.
  add_test(NAME "finetune --model: --grad-accum 2 halves the steps"
           COMMAND sora-finetune --model "${_ft_hf_model}" --method lora --plain --seeds 1
                   --train-size 96 --val-size 48 --test-size 48 --epochs 2 --batch-size 16
                   --grad-accum 2 --max-length 32 --lr 0.05 --out "${_ft_hf_out}-accum")
  set_tests_properties("finetune --model: --grad-accum 2 halves the steps" PROPERTIES
    FIXTURES_REQUIRED sora_ft_hf_model PASS_REGULAR_EXPRESSION "lora seed 0  6/6 .*report: ")
endif()
if(TARGET sora::text)
  # The same for GPT-2 (a byte-level BPE tokenizer, the "score" head, no token types), on the
  # pair task.
  set(_ft_gpt2_model "${CMAKE_CURRENT_BINARY_DIR}/finetune-tiny-gpt2")
  set(_ft_gpt2_out "${CMAKE_CURRENT_BINARY_DIR}/finetune-model-tiny-gpt2")
  add_test(NAME "finetune --model gpt2: clean" COMMAND ${CMAKE_COMMAND} -E rm -rf
                                                       "${_ft_gpt2_model}" "${_ft_gpt2_out}")
  add_test(NAME "finetune --model gpt2: mkdir" COMMAND ${CMAKE_COMMAND} -E make_directory
                                                       "${_ft_gpt2_model}")
  sora_add_python_test("finetune --model gpt2: make a tiny GPT-2 folder"
                       "${CMAKE_CURRENT_SOURCE_DIR}/finetune/make_tiny_bert.py"
                       "${_ft_gpt2_model}" gpt2)
  add_test(NAME "finetune --model gpt2: tiny compare run"
           COMMAND sora-finetune --model "${_ft_gpt2_model}" --compare --task pair --plain
                   --seeds 1 --train-size 96 --val-size 48 --test-size 48 --epochs 2
                   --batch-size 16 --max-length 32 --lr 0.05 --full-lr 0.01
                   --out "${_ft_gpt2_out}")
  sora_add_python_test("finetune --model gpt2: PEFT loads the adapters and computes sora's logits"
                       "${CMAKE_CURRENT_SOURCE_DIR}/finetune/check_peft_load.py"
                       "${_ft_gpt2_model}" "${_ft_gpt2_out}")
  set_tests_properties("finetune --model gpt2: clean" PROPERTIES FIXTURES_SETUP sora_ft_g_clean)
  set_tests_properties("finetune --model gpt2: mkdir" PROPERTIES
    FIXTURES_REQUIRED sora_ft_g_clean FIXTURES_SETUP sora_ft_g_dir)
  set_tests_properties("finetune --model gpt2: make a tiny GPT-2 folder" PROPERTIES
    FIXTURES_REQUIRED sora_ft_g_dir FIXTURES_SETUP sora_ft_g_model PASS_REGULAR_EXPRESSION "OK: ")
  set_tests_properties("finetune --model gpt2: tiny compare run" PROPERTIES
    FIXTURES_REQUIRED sora_ft_g_model FIXTURES_SETUP sora_ft_g_out
    PASS_REGULAR_EXPRESSION "model: .*\\(gpt2\\).*method.*adalora.*report: ")
  set_tests_properties("finetune --model gpt2: PEFT loads the adapters and computes sora's logits"
    PROPERTIES FIXTURES_REQUIRED "sora_ft_g_model;sora_ft_g_out" PASS_REGULAR_EXPRESSION "OK: 3 ")
endif()
