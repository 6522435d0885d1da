// curl_global_init, once per process, before any other libcurl call (curl_loop.cpp).
// Private to src/net/.
#pragma once

namespace drayage::net::detail {

void ensure_curl_global();

}  // namespace drayage::net::detail
