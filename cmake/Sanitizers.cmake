# -DOUTBOXD_SANITIZE=ON builds everything with AddressSanitizer and
# UndefinedBehaviorSanitizer; UB reports abort so tests fail on them.
option(OUTBOXD_SANITIZE "Build with ASan and UBSan" OFF)
if(OUTBOXD_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
  # Tests that bound memory allow for ASan's shadow memory and quarantine.
  add_compile_definitions(OUTBOXD_SANITIZED=1)
endif()
