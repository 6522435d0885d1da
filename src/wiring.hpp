// The running server: every module built from the configuration and wired together on one
// event loop (wiring.cpp). main() parses arguments, loads the config and starts logging; serve()
// does the rest.
#pragma once

#include "drayage/config/config.hpp"

namespace drayage {

// Builds, in order, the event loop, the cache, the upstream registry client, the S3 bucket, the
// push path, the passthrough to the upstream, client authentication, the registry front, the
// HTTP server (TLS, hit workers) and the signal handlers (SIGTERM/SIGINT: graceful stop,
// SIGHUP: reopen logs, reload auth rules and the TLS certificate); then runs the loop until a
// signal stops it. Everything is torn down in reverse order. Returns the exit status: 0 after a
// signal, 1 when a component cannot start (the reason is logged as critical). `version` goes
// into the "listening" line.
int serve(const config::Config& cfg, const char* version);

}  // namespace drayage
