// Admission: who may do what (deps.auth set). The rules are checked before anything is routed;
// auth.passthrough repositories are decided by the upstream with the client's own credentials.
// On every mirror, with auth or without, a blob is served for a repository only once drayage
// knows it belongs there (prove_blob).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/util/query.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

namespace {

// What a route needs of the client: pull for reads, pull and push for uploads (as
// Distribution asks), push for everything else that writes.
std::vector<Action> needed(const Route& r, std::string_view method) {
    bool read = method == "GET" || method == "HEAD";
    switch (r.endpoint) {
        case Endpoint::blob:
        case Endpoint::manifest:
        case Endpoint::tags:
            if (read) return {Action::pull};
            return {Action::push};
        case Endpoint::upload_start:
        case Endpoint::upload: return {Action::pull, Action::push};
        default: return {Action::push};
    }
}

// An S3 answer that says the object is not there (as opposed to a bucket that did not answer).
bool is_missing(const Error& e) {
    return e.status == 404 || e.code == "NoSuchKey" || e.code == "NotFound";
}

std::string scope_for(const std::string& repo, const std::vector<Action>& actions) {
    std::string s = "repository:" + repo + ":";
    for (std::size_t i = 0; i < actions.size(); ++i)
        s += std::string(i ? "," : "") + (actions[i] == Action::pull ? "pull" : "push");
    return s;
}

}  // namespace

// Checks the client against the rules before anything is routed, then dispatches. Normalises
// r.name (so caching, links and the upstream all see one spelling).
void RegistryFront::Impl::admit(const std::shared_ptr<Exchange>& ex, Route r) {
    if (r.endpoint == Endpoint::healthz || r.endpoint == Endpoint::metrics)
        return dispatch(ex, r, Identity{});
    // New Basic credentials are checked off the loop first (bcrypt); the rest at once.
    deps.auth->prepare(ex->request(), [self = shared_from_this(), ex, r](bool ready) mutable {
        if (ex->closed()) return;
        if (!ready) {
            ex->set_outcome("denied:busy");
            return send_error(*ex, 503, "UNAVAILABLE",
                              "too many password checks in progress; retry shortly");
        }
        Identity who;
        if (self->admit_by_rules(ex, r, who)) self->dispatch(ex, r, who);
    });
}

// True when the rules admit the request; false when the exchange has been answered or a
// pass-through check will dispatch it later.
bool RegistryFront::Impl::admit_by_rules(const std::shared_ptr<Exchange>& ex, Route& r,
                                         Identity& who) {
    Authenticator& auth = *deps.auth;
    who = auth.identify(ex->request());
    if (!who.principal.user.empty()) ex->set_user(who.principal.user);
    if (who.kind == Identity::Kind::bad_credentials && !r.name.empty()) {
        // A pass-through user is not in drayage's htpasswd: the upstream may still know it.
        auto name = normalize_repository(r.name, auth.policy().docker_hub());
        if (name && auth.policy().is_passthrough(*name)) {
            r.name = std::move(*name);
            admit_passthrough(ex, r);
            return false;
        }
    }
    if (who.kind == Identity::Kind::bad_credentials) {
        spdlog::info("auth: {} refused: {}", ex->request().peer, who.problem);
        ex->set_outcome("denied:credentials");
        auth.challenge(*ex, "", "authentication required");
        return false;
    }
    if (r.endpoint == Endpoint::base) {
        // docker pings /v2/ first and only authenticates when told to here.
        if (who.kind != Identity::Kind::anonymous) return true;
        ex->set_outcome("denied:anonymous");
        auth.challenge(*ex, "", "authentication required");
        return false;
    }
    if (r.endpoint == Endpoint::catalog) {
        bool ok = who.kind == Identity::Kind::basic ||
                  (who.kind == Identity::Kind::bearer &&
                   std::any_of(who.token_access.begin(), who.token_access.end(),
                               [](const ResourceAccess& a) { return a.type == "registry"; }));
        if (ok) return true;
        ex->set_outcome("denied:catalog");
        auth.challenge(*ex, "registry:catalog:*", "authentication required");
        return false;
    }
    auto name = normalize_repository(r.name, auth.policy().docker_hub());
    if (!name) {
        send_error(*ex, 400, "NAME_INVALID", name.error().message);
        return false;
    }
    r.name = std::move(*name);
    std::vector<Action> actions = needed(r, ex->request().method);
    for (Action a : actions) {
        if (auth.may(who, r.name, a)) continue;
        if (auth.policy().is_passthrough(r.name)) {
            admit_passthrough(ex, r);
            return false;
        }
        ex->set_outcome("denied:rules");
        auth.challenge(*ex, scope_for(r.name, actions), "access to the repository denied");
        return false;
    }
    return true;
}

// A cross-repository mount (?mount=<digest>&from=<repo>) copies a blob into r.name: only
// for a client that may pull `from` and a digest that belongs to `from`, or bytes of a
// repository it cannot read would become readable under its own.
void RegistryFront::Impl::check_mount(const std::shared_ptr<Exchange>& ex, const Route& r,
                                      const Identity& who) {
    // Read with the push path's own reader, and mount= before digest= as the push path
    // acts on them: a usable mount= is what is checked here, and the push code places no
    // blob from digest= without hashing the body.
    auto param = [&](std::string_view key) { return query::param(ex->request().query, key); };
    auto mount = param("mount");
    if (!mount) return deps.uploads(ex, r);
    auto digest = BlobDigest::parse(*mount);
    if (!digest) return deps.uploads(ex, r);  // to the push code, an upload like any other
    auto from = normalize_repository(param("from").value_or(""), deps.auth->policy().docker_hub());
    // No `from`, or one outside the grammar: nothing to mount from. The push path, reading the
    // same `from`, opens an upload session instead (the spec's 202, as the registry does).
    if (!from) return deps.uploads(ex, r);
    if (!deps.auth->may(who, *from, Action::pull)) {
        ex->set_outcome("denied:mount");
        return deps.auth->challenge(*ex,
                                    scope_for(r.name, {Action::pull, Action::push}) + " " +
                                        scope_for(*from, {Action::pull}),
                                    "mount source not readable");
    }
    Route source{Endpoint::blob, *from, digest->str(), true};
    auto self = shared_from_this();
    auto go = [self, ex, r] { self->deps.uploads(ex, r); };
    // Unproven, the push path opens an upload session too: it mounts only a blob the bucket
    // links in `from`, and such a link would have been the proof.
    prove_blob(ex, source, go, go);
}

// auth.passthrough: reads of these repositories are allowed when the upstream lets the
// client's own Basic credentials read them (UpstreamAccessCheck; fails closed). Writes are
// never passed through: they need a rule.
void RegistryFront::Impl::admit_passthrough(const std::shared_ptr<Exchange>& ex, const Route& r) {
    Authenticator& auth = *deps.auth;
    std::vector<Action> actions = needed(r, ex->request().method);
    auto creds = basic_credentials(ex->request());
    bool reads = actions.size() == 1 && actions[0] == Action::pull;
    if (!deps.upstream_access || !reads || !creds) {
        // The token endpoint checks such credentials upstream too (Authenticator::grant).
        ex->set_outcome("denied:passthrough");
        return auth.challenge(*ex, scope_for(r.name, actions),
                              "credentials for the upstream registry required");
    }
    // A tag listing names no manifest: HEAD "latest" (a 404 after the access check still
    // says the repository is readable).
    std::string reference = r.endpoint == Endpoint::tags ? "latest" : r.reference;
    bool blob = r.endpoint == Endpoint::blob;
    auto self = shared_from_this();
    std::string user = creds->first;
    deps.upstream_access->check(ex->request().peer, creds->first, creds->second, r.name, reference,
                                blob, [self, ex, r, user](PassthroughVerdict verdict) {
                                    if (ex->closed()) return;
                                    if (verdict == PassthroughVerdict::busy) {
                                        ex->set_outcome("denied:busy");
                                        return send_error(
                                            *ex, 503, "UNAVAILABLE",
                                            "too many pass-through checks waiting; retry shortly");
                                    }
                                    if (verdict != PassthroughVerdict::allowed) {
                                        ex->set_outcome("denied:passthrough");
                                        return self->deps.auth->challenge_basic(
                                            *ex, "the upstream registry refused access");
                                    }
                                    ex->set_user(user);
                                    Identity who;
                                    who.kind = Identity::Kind::basic;
                                    who.principal = Principal{user, true};
                                    self->dispatch(ex, r, who);
                                });
}

void RegistryFront::Impl::authorize(const std::shared_ptr<Exchange>& ex, std::string_view repo,
                                    Action action, std::function<void(bool)> done) {
    if (!deps.auth) return done(true);
    Authenticator& auth = *deps.auth;
    Identity who = auth.identify(ex->request());
    auto name = normalize_repository(repo, auth.policy().docker_hub());
    if (name && auth.may(who, *name, action)) return done(true);
    ex->set_outcome("denied:rules");
    auth.challenge(*ex, name ? scope_for(*name, {action}) : std::string(),
                   "access to the repository denied");
    done(false);
}

// The repository/digest proof: `go` runs only when drayage knows `digest` belongs to
// `repo` — a link recorded by an earlier proof or by a push to `repo`, the repository's
// layer link in the bucket, or a 200 for a HEAD of the blob in that repository upstream (a
// manifest of `repo` naming the digest is not proof: see fetch_manifest). Otherwise the
// client gets 404 BLOB_UNKNOWN (503 when the upstream could not answer), the same as for a
// blob that does not exist, and never joins a fill.
void RegistryFront::Impl::prove_blob(const std::shared_ptr<Exchange>& ex, const Route& r,
                                     std::function<void()> go, std::function<void()> unproven) {
    auto linked = deps.cache->is_linked(r.name, r.reference);
    if (linked && *linked) return go();
    auto self = shared_from_this();
    auto refuse = [self, ex, unproven](const std::optional<Error>& upstream_error) {
        if (unproven) return unproven();
        self->refuse_unlinked(*ex, upstream_error);
    };
    auto ask_upstream = [self, ex, r, go, refuse] {
        if (!self->deps.upstream) return refuse(std::nullopt);
        self->deps.upstream->head_blob(r.name, r.reference,
                                       [self, ex, r, go, refuse](Result<UpstreamBlobHead> h) {
                                           if (ex->closed()) return;
                                           if (!h) return refuse(h.error());
                                           self->deps.cache->link(r.name, r.reference);
                                           go();
                                       });
    };
    const auto& s3cfg = deps.config->storage.s3;
    auto digest = BlobDigest::parse(r.reference);
    if (!deps.bucket || !s3cfg || !digest || digest->algorithm() != DigestAlgorithm::sha256)
        return ask_upstream();
    s3::BucketLayout layout(s3cfg->rootdirectory);
    deps.bucket->head(layout.layer_link_key(r.name, *digest),
                      [self, ex, r, go, ask_upstream](Result<s3::ObjectInfo> info) {
                          if (ex->closed()) return;
                          if (!info && !self->deps.upstream && !is_missing(info.error()))
                              return self->refuse_unreadable_bucket(*ex, r, info.error());
                          if (!info) return ask_upstream();
                          self->deps.cache->link(r.name, r.reference);
                          go();
                      });
}

// The bucket could not be read and there is no upstream to ask: the proof cannot be made now,
// which is not the same as a blob the repository does not hold.
void RegistryFront::Impl::refuse_unreadable_bucket(Exchange& ex, const Route& r, const Error& e) {
    spdlog::warn("blob {} from s3: the layer link of {} could not be read: {}", r.reference, r.name,
                 e.to_string());
    ex.set_outcome("unproven:s3-down");
    send_error(ex, 503, "UNAVAILABLE",
               "cannot confirm the blob belongs to this repository now: the bucket did not answer");
}

void RegistryFront::Impl::refuse_unlinked(Exchange& ex,
                                          const std::optional<Error>& upstream_error) {
    if (upstream_error && is_upstream_outage(*upstream_error)) {
        ex.set_outcome("unproven:upstream-down");
        return send_error(ex, 503, "UNAVAILABLE",
                          "cannot confirm the blob belongs to this repository now");
    }
    ex.set_outcome("unproven");
    outcome_counter("blob", "unproven").inc();
    send_error(ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
}

}  // namespace drayage::registry
