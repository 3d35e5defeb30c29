// libFuzzer target for the pgoutput decoder.
//
// An input is a sequence of frames, each a 2-byte big-endian length and that
// many bytes (a shorter tail is one last frame), all fed to one decoder so
// that Relation and Type messages fill its caches for the Insert, Update,
// Delete and Truncate messages after them. The decoder must return an error
// or a message for every frame and never crash, hang or read out of bounds.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "cdc/pgoutput_decoder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  outboxd::PgoutputDecoder decoder;
  std::size_t pos = 0;
  while (pos < size) {
    std::size_t len = size - pos;
    if (size - pos >= 2) {
      len = (static_cast<std::size_t>(data[pos]) << 8) | data[pos + 1];
      pos += 2;
      if (len > size - pos) len = size - pos;
    }
    const std::string_view frame(reinterpret_cast<const char*>(data + pos), len);
    auto message = decoder.Decode(frame);
    (void)message.ok();
    pos += len;
  }
  return 0;
}
