# Warnings for outboxd's own targets. Fallible calls are [[nodiscard]], so
# ignoring a result is an error, not a warning.
add_compile_options(-Wall -Wextra -Wpedantic -Werror=unused-result)
option(OUTBOXD_WERROR "Treat warnings as errors" OFF)
if(OUTBOXD_WERROR)
  add_compile_options(-Werror)
endif()
