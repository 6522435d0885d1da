// Manifests and tags. A manifest by digest is served from the cache (with auth, only for a
// repository it was fetched for or pushed to); a tag is served from the cache within
// upstream.manifest_ttl, then revalidated with a HEAD upstream, and served stale while the
// upstream is down, up to upstream.max_stale.
#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "drayage/util/clock.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using http::HeaderList;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts
using Clock = RegistryFront::Impl::Clock;

namespace {

// What clients get when they send no Accept for a manifest: every type drayage passes through.
constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

HeaderList manifest_headers(const std::string& media_type, const std::string& digest) {
    HeaderList h = api::headers();
    h.emplace_back("Content-Type", media_type);
    h.emplace_back("Docker-Content-Digest", digest);
    h.emplace_back("ETag", "\"" + digest + "\"");
    return h;
}

void send_manifest(Exchange& ex, const cache::Document& doc, const std::string& digest,
                   bool stale) {
    HeaderList h = manifest_headers(doc.media_type, digest);
    if (stale) h.emplace_back("Warning", "110 drayage \"Response is Stale\"");
    ex.send_head(200, std::move(h), doc.bytes.size());
    ex.write(doc.bytes);
    ex.finish();
}

std::string accept_of(const Exchange& ex) {
    std::string accept;
    for (const auto& [k, v] : ex.request().headers) {
        if (!http::iequals(k, "Accept")) continue;
        if (!accept.empty()) accept += ", ";
        accept += v;
    }
    return accept.empty() ? kManifestAccept : accept;
}

// Whether the client's Accept admits a manifest of `media_type` (no Accept: anything).
bool accepts(const Exchange& ex, const std::string& media_type) {
    bool any_accept = false;
    for (const auto& [k, v] : ex.request().headers) {
        if (!http::iequals(k, "Accept")) continue;
        any_accept = true;
        std::string_view list = v;
        while (!list.empty()) {
            auto comma = list.find(',');
            std::string_view item = list.substr(0, comma);
            list = comma == std::string_view::npos ? "" : list.substr(comma + 1);
            item = item.substr(0, item.find(';'));
            while (!item.empty() && item.front() == ' ')
                item.remove_prefix(1);
            while (!item.empty() && item.back() == ' ')
                item.remove_suffix(1);
            if (item == media_type || item == "*/*") return true;
        }
    }
    return !any_accept;
}

}  // namespace

void RegistryFront::Impl::remember_tag(const std::string& key, const std::string& digest,
                                       const std::string& media_type) {
    tags[key] = TagEntry{digest, media_type, Clock::now()};
    deps.cache->put_tag(key, cache::TagRecord{digest, media_type, clock::unix_now()});
}

void RegistryFront::Impl::forget_tag(std::map<std::string, TagEntry>::iterator it) {
    deps.cache->drop_tag(it->first);
    tags.erase(it);
}

// A tag this process has not seen, from the records of an earlier run. Its age carries
// over, so manifest_ttl and max_stale count from when the upstream last confirmed it.
std::map<std::string, RegistryFront::Impl::TagEntry>::iterator RegistryFront::Impl::restore_tag(
    const std::string& key) {
    auto rec = deps.cache->get_tag(key);
    if (!rec) {
        spdlog::warn("tag record {} unreadable: {}", key, rec.error().to_string());
        return tags.end();
    }
    if (!*rec) return tags.end();
    auto age = std::chrono::seconds(std::max<std::int64_t>(0, clock::unix_now() - (*rec)->checked));
    TagEntry e{(*rec)->digest, (*rec)->media_type,
               Clock::now() - std::chrono::duration_cast<Clock::duration>(age)};
    return tags.emplace(key, std::move(e)).first;
}

void RegistryFront::Impl::serve_manifest(const std::shared_ptr<Exchange>& ex, const Route& r) {
    if (r.by_digest) {
        // A cached manifest is served for <name> only when it was fetched for <name> (and
        // not deleted there since); otherwise the upstream is asked for <name>.
        auto linked = deps.cache->is_linked(r.name, r.reference);
        if (!linked || !*linked) return fetch_manifest(ex, r);
        // A client that does not accept the cached manifest's type gets what the upstream
        // answers it (docker-registry: 404 MANIFEST_UNKNOWN, by digest as by tag), never a
        // type it did not ask for.
        auto doc = deps.cache->get_document(r.reference);
        if (doc && *doc && accepts(*ex, (*doc)->media_type)) {
            ex->set_outcome("hit");
            outcome_counter("manifest", "hit").inc();
            return send_manifest(*ex, **doc, r.reference, false);
        }
        return fetch_manifest(ex, r);
    }
    std::string key = r.name + ":" + r.reference;
    auto it = tags.find(key);
    if (it == tags.end()) it = restore_tag(key);
    if (it == tags.end() || !accepts(*ex, it->second.media_type)) return fetch_manifest(ex, r);
    TagEntry entry = it->second;
    auto doc = deps.cache->get_document(entry.digest);
    if (!doc || !*doc) {
        forget_tag(it);
        return fetch_manifest(ex, r);
    }
    if (Clock::now() - entry.checked < upstream_config().manifest_ttl) {
        ex->set_outcome("hit");
        outcome_counter("manifest", "hit").inc();
        return send_manifest(*ex, **doc, entry.digest, false);
    }
    revalidate_tag(ex, r, key, entry, std::move(**doc));
}

bool RegistryFront::Impl::may_serve_stale(const TagEntry& e) const {
    return Clock::now() - e.checked < upstream_config().max_stale;
}

void RegistryFront::Impl::revalidate_tag(const std::shared_ptr<Exchange>& ex, const Route& r,
                                         const std::string& key, const TagEntry& entry,
                                         cache::Document doc) {
    if (!deps.upstream) {
        ex->set_outcome("stale");
        return send_manifest(*ex, doc, entry.digest, true);
    }
    auto self = shared_from_this();
    deps.upstream->head_manifest(
        r.name, r.reference, accept_of(*ex),
        [self, ex, r, key, entry, doc = std::move(doc)](Result<UpstreamManifest> head) {
            if (ex->closed()) return;
            if (head && head->digest == entry.digest) {
                self->remember_tag(key, entry.digest, entry.media_type);
                ex->set_outcome("revalidated");
                outcome_counter("manifest", "revalidated").inc();
                return send_manifest(*ex, doc, entry.digest, false);
            }
            if (head) return self->fetch_manifest(ex, r);  // tag moved
            if (is_upstream_outage(head.error()) && self->may_serve_stale(entry)) {
                ex->set_outcome("stale");
                outcome_counter("manifest", "stale").inc();
                return send_manifest(*ex, doc, entry.digest, true);
            }
            send_origin_error(*ex, head.error(), "MANIFEST_UNKNOWN");
        });
}

void RegistryFront::Impl::fetch_manifest(const std::shared_ptr<Exchange>& ex, const Route& r) {
    if (!deps.upstream) {
        ex->set_outcome("miss:none");
        return send_error(*ex, 404, "MANIFEST_UNKNOWN", "manifest unknown");
    }
    auto self = shared_from_this();
    std::string accept = accept_of(*ex);
    bool head_only = ex->request().method == "HEAD";
    auto done = [self, ex, r, accept, head_only](Result<UpstreamManifest> m) {
        if (ex->closed()) return;
        if (!m) {
            ex->set_outcome("miss:error");
            return send_origin_error(*ex, m.error(), "MANIFEST_UNKNOWN");
        }
        ex->set_outcome("miss:upstream");
        outcome_counter("manifest", "miss:upstream").inc();
        std::string digest = m->digest.empty() && r.by_digest ? r.reference : m->digest;
        if (head_only) {
            HeaderList h = manifest_headers(m->media_type, digest);
            ex->send_head(200, std::move(h), m->size);
            return ex->finish();
        }
        if (digest.empty()) {
            // Without a digest the manifest cannot be cached by digest; pass it on.
            HeaderList h = api::headers();
            h.emplace_back("Content-Type", m->media_type);
            return ex->respond(200, std::move(h), std::move(m->body));
        }
        if (!r.by_digest) self->remember_tag(r.name + ":" + r.reference, digest, m->media_type);
        // The manifest belongs to r.name: it was fetched for r.name. What it names does
        // not, by that alone: a manifest is a claim of whoever pushed it, and a registry
        // may accept digests it does not hold there (foreign layers with `urls`). Its
        // config and layers are linked once proven (prove_blob), child manifests once
        // fetched for r.name; the body is not parsed.
        self->deps.cache->link(r.name, digest);
        cache::Document doc{m->media_type, m->body};
        auto st = self->deps.cache->put_document(digest, m->media_type, std::move(m->body));
        if (!st) spdlog::warn("manifest {} not cached: {}", digest, st.error().to_string());
        send_manifest(*ex, doc, digest, false);
    };
    if (head_only && !r.by_digest) {
        deps.upstream->head_manifest(r.name, r.reference, accept, std::move(done));
    } else {
        deps.upstream->get_manifest(r.name, r.reference, accept, std::move(done));
    }
}

}  // namespace drayage::registry
