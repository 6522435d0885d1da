// `drayage cache <command>`: operator commands on the blob cache at cache.path.
//
// Safe while the server runs: the CLI opens the same LMDB environment, writes through LMDB's own
// writer lock in short transactions, and never touches `filling` records (they belong to the
// server's running fills; the server sweeps leftovers at start). Evicting a blob a client is
// downloading from the server cuts that transfer (the server's reader reports cache.gone); pins
// are per process.
//
//   stats               sizes (charged vs max_size, pages in use, file, map), blob counts
//   ls                  digest, size, last access (UTC), hits, media type; least recent first
//   verify              rehash every complete blob; drop and report corrupt ones (exit 1 if any)
//   evict DIGEST|--all  drop one blob, or every complete blob
//
// Exit status: 0 success, 1 failure (message on stderr names the cause), 2 usage error.
// verify and evict --all draw a progress bar on stderr when it is a terminal.
#pragma once

#include <string>
#include <vector>

#include "drayage/config/config.hpp"

namespace drayage::cache {

// `args` starts with the command name (no "cache", no --config).
int run_cache_command(const std::vector<std::string>& args,
                      const drayage::config::CacheConfig& cfg);

}  // namespace drayage::cache
