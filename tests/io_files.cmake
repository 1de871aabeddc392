# Checks of sora's files from outside the library: a small program writes a valid
# safetensors file, a malformed one and a PEFT adapter folder; Python's standard library
# parses the safetensors file on its own terms, and sora-inspect prints all three.
add_executable(sora_io_fixtures io_fixtures.cpp)
target_link_libraries(sora_io_fixtures PRIVATE sora::io)
sora_target_warnings(sora_io_fixtures)
add_dependencies(sora_test_io sora_io_fixtures)  # building the suite builds its fixtures

set(_io_files "${CMAKE_CURRENT_BINARY_DIR}/io-files")
add_test(NAME "io: write fixture files" COMMAND sora_io_fixtures "${_io_files}")
set_tests_properties("io: write fixture files" PROPERTIES FIXTURES_SETUP sora_io_files)

find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME "io: python stdlib parses a sora safetensors file"
           COMMAND Python3::Interpreter "${CMAKE_CURRENT_SOURCE_DIR}/io_check_safetensors.py"
                   "${_io_files}/good.safetensors")
  set_tests_properties("io: python stdlib parses a sora safetensors file"
                       PROPERTIES FIXTURES_REQUIRED sora_io_files)
endif()

# sora-inspect is an example program; its tests exist where it is built.
if(SORA_BUILD_EXAMPLES)
  find_package(CLI11 QUIET)
endif()
if(SORA_BUILD_EXAMPLES AND CLI11_FOUND)
  # Output tests check the exit status too (sora_add_output_test, tests/CMakeLists.txt).
  sora_add_output_test("inspect: a safetensors file"
    REGEX "blocks\\.0\\.attn\\.q\\.weight +F32 +\\[4, 3\\] +min -6 +max 5\\.5 +mean -0\\.125 .*zeros 8\\.33%.*format += pt"
    COMMAND $<TARGET_FILE:sora-inspect> "${_io_files}/good.safetensors")
  set_tests_properties("inspect: a safetensors file" PROPERTIES FIXTURES_REQUIRED sora_io_files)
  sora_add_output_test("inspect: a PEFT adapter folder"
    REGEX "lora_alpha += 16.*blocks\\.0\\.attn\\.q +rank 2 .*blocks\\.1\\.mlp\\.fc1 +rank 3 "
    COMMAND $<TARGET_FILE:sora-inspect> "${_io_files}/adapter")
  set_tests_properties("inspect: a PEFT adapter folder" PROPERTIES FIXTURES_REQUIRED sora_io_files)
  # A malformed file: the reader's error on stderr, and a non-zero exit status (not a crash).
  sora_add_output_test("inspect: a malformed file prints the error"
    REGEX "bad\\.safetensors: tensors 'a' and 'b' overlap" EXPECT error
    COMMAND $<TARGET_FILE:sora-inspect> "${_io_files}/bad.safetensors")
  set_tests_properties("inspect: a malformed file prints the error" PROPERTIES
    FIXTURES_REQUIRED sora_io_files)
  add_test(NAME "inspect: a malformed file exits non-zero" COMMAND sora-inspect "${_io_files}/bad.safetensors")
  set_tests_properties("inspect: a malformed file exits non-zero" PROPERTIES
    FIXTURES_REQUIRED sora_io_files WILL_FAIL TRUE)
endif()
