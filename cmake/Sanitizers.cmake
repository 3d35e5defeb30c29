# -DOUTBOXD_SANITIZE=ON builds everything with AddressSanitizer and
# UndefinedBehaviorSanitizer; UB reports abort so tests fail on them.
option(OUTBOXD_SANITIZE "Build with ASan and UBSan" OFF)
if(OUTBOXD_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
  # Tests that bound memory allow for ASan's shadow memory and quarantine.
  add_compile_definitions(OUTBOXD_SANITIZED=1)
endif()

# -DOUTBOXD_TSAN=ON builds everything with ThreadSanitizer (scripts/test.sh
# --tsan): the source threads, librdkafka's and civetweb's share Metrics.
option(OUTBOXD_TSAN "Build with ThreadSanitizer" OFF)
if(OUTBOXD_TSAN)
  if(OUTBOXD_SANITIZE)
    message(FATAL_ERROR "OUTBOXD_TSAN and OUTBOXD_SANITIZE exclude each other")
  endif()
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
  add_compile_definitions(OUTBOXD_SANITIZED=1)
  # librdkafka's threads through the intercepted pthread calls (see the file).
  add_library(outboxd_tsan_threads OBJECT ${CMAKE_CURRENT_LIST_DIR}/tsan_c11_threads.cc)
  link_libraries(outboxd_tsan_threads)
endif()
