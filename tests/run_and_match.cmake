# Runs a command and checks its output against a regular expression AND its exit status.
# PASS_REGULAR_EXPRESSION alone makes CTest ignore the exit status, so a program that prints
# the expected line and then crashes would pass; tests run through this script instead.
#
#   cmake -DREGEX=<regex> [-DEXPECT=zero|error] [-DSKIP_CODE=<n>] [-DSKIP_REGEX=<regex>]
#         -P run_and_match.cmake -- <command> [args...]
#
# EXPECT=zero (the default): the command must exit with status 0. EXPECT=error: it must exit
# with a non-zero status (the error path of a program), but by returning, not by a signal.
# The regex is matched against stdout and stderr together, as CTest does. SKIP_CODE and
# SKIP_REGEX stand in for SKIP_RETURN_CODE and SKIP_REGULAR_EXPRESSION: a skip prints
# "SORA_TEST_SKIPPED", which the test's own SKIP_REGULAR_EXPRESSION turns into a skip.
cmake_minimum_required(VERSION 3.20)

# The command is everything after "--" on the cmake command line.
set(_cmd "")
set(_seen_separator FALSE)
math(EXPR _last "${CMAKE_ARGC} - 1")
foreach(_i RANGE 1 ${_last})
  if(_seen_separator)
    string(REPLACE ";" "\\;" _arg "${CMAKE_ARGV${_i}}")  # keep a ";" inside one argument
    list(APPEND _cmd "${_arg}")
  elseif(CMAKE_ARGV${_i} STREQUAL "--")
    set(_seen_separator TRUE)
  endif()
endforeach()
if(NOT _cmd)
  message(FATAL_ERROR "run_and_match.cmake: no command after --")
endif()
if(NOT DEFINED REGEX)
  message(FATAL_ERROR "run_and_match.cmake: -DREGEX=... is required")
endif()
if(NOT DEFINED EXPECT)
  set(EXPECT zero)
endif()
if(NOT EXPECT MATCHES "^(zero|error)$")
  message(FATAL_ERROR "run_and_match.cmake: EXPECT must be zero or error, got '${EXPECT}'")
endif()

execute_process(COMMAND ${_cmd} RESULT_VARIABLE _status OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
# Echo the output so that CTest's log shows what the command printed.
message("${_out}")

if(DEFINED SKIP_CODE AND _status STREQUAL "${SKIP_CODE}")
  message("SORA_TEST_SKIPPED: exit status ${_status}")
  return()
endif()
if(DEFINED SKIP_REGEX AND _out MATCHES "${SKIP_REGEX}")
  message("SORA_TEST_SKIPPED: the output matches '${SKIP_REGEX}'")
  return()
endif()

# A number is a normal exit; anything else ("Segmentation fault", "Child aborted", ...) is how
# execute_process reports a signal or a failure to start.
if(NOT _status MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the command did not exit normally: ${_status}")
endif()
if(EXPECT STREQUAL "zero" AND NOT _status EQUAL 0)
  message(FATAL_ERROR "the command exited with status ${_status}, expected 0")
endif()
if(EXPECT STREQUAL "error" AND _status EQUAL 0)
  message(FATAL_ERROR "the command exited with status 0, expected an error status")
endif()
if(NOT _out MATCHES "${REGEX}")
  message(FATAL_ERROR "the output does not match the regular expression '${REGEX}'")
endif()
