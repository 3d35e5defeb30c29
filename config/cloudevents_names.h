#pragma once
// What CloudEvents 1.0 accepts as an extension attribute's name and as a
// source, checked when the configuration is loaded (pipeline/cloudevents.h
// writes the events).

#include <string>
#include <string_view>

namespace outboxd {

// Why `name` cannot be a CloudEvents extension attribute name (lower-case
// ASCII letters and digits, at most 20, not a context attribute's name), or
// "" when it can.
std::string CheckExtensionName(std::string_view name);

// Why `source` is not a URI-reference (RFC 3986 characters, well-formed
// percent-escapes, not empty), or "" when it is.
std::string CheckSourceUri(std::string_view source);

// The default source of events about `table` ("schema.table", or a name
// as written): "/outboxd/" and the name, each byte that is not an RFC 3986
// unreserved character percent-encoded, so that it is a URI-reference.
std::string DefaultSource(std::string_view table);

}  // namespace outboxd
