// Unit tests of the pure auth pieces: name normalisation, globs, rules, htpasswd, JWTs, scopes.
#include "drayage/registry/auth.hpp"

#include <event2/event.h>
#include <event2/thread.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "drayage/registry/routes.hpp"
#include "drayage/util/metrics.hpp"

using namespace drayage;
using namespace drayage::registry;

namespace {

config::AuthConfig rules_config() {
    config::AuthConfig c;
    c.groups["dev"] = {"carol"};
    c.rules.push_back({{"public/**"}, {"*"}, {}});
    c.rules.push_back({{"private/*"}, {"alice", "group:dev"}, {"alice"}});
    c.rules.push_back({{"busybox"}, {"anonymous"}, {}});
    c.rules.push_back({{"team/*/tools"}, {"authenticated"}, {}});
    c.passthrough = {"vendor/**"};
    return c;
}

// "alice:pw" and "bob:bobpw", bcrypt cost 4 (htpasswd -B -C 4).
constexpr const char* kHtpasswd =
    "# users\n"
    "alice:$2y$04$m6vRZdScEsM6jqP3dJnYOu2DKYcE8zKLgNOGsHcOTF9tGDSabVNi2\n"
    "\n"
    "bob:$2y$04$eB3RVJIeoFdCSbS36iUnje92M3b7ivwFBcZrtr9c2pqxP2Sw2VEje\n";

}  // namespace

TEST_CASE("repository names normalise to one spelling or are refused") {
    CHECK(*normalize_repository("private/app", false) == "private/app");
    CHECK(*normalize_repository("Private/App", false) == "private/app");
    CHECK(*normalize_repository("busybox", true) == "library/busybox");
    CHECK(*normalize_repository("busybox", false) == "busybox");
    CHECK(*normalize_repository("library/busybox", true) == "library/busybox");
    for (const char* bad : {"", "private%2Fapp", "private%2fapp", "public/../private/app",
                            "./private/app", "private//app", "/private/app", "private/app/",
                            "private/./app", "..", "private/app?ns=x", "pri vate"}) {
        INFO(bad);
        auto r = normalize_repository(bad, true);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "NAME_INVALID");
    }
}

TEST_CASE("globs: * stays in a component, ** crosses") {
    CHECK(glob_match("team/*", "team/app"));
    CHECK_FALSE(glob_match("team/*", "team/app/x"));
    CHECK(glob_match("team/**", "team/app/x"));
    CHECK(glob_match("team/**", "team/a"));
    CHECK_FALSE(glob_match("team/**", "teamx/a"));
    CHECK(glob_match("*/tools", "a/tools"));
    CHECK_FALSE(glob_match("*/tools", "a/b/tools"));
    CHECK(glob_match("**/tools", "a/b/tools"));
    CHECK(glob_match("app-*", "app-1"));
    CHECK_FALSE(glob_match("app", "app2"));
    CHECK(glob_match("**", "anything/at/all"));
    CHECK_FALSE(glob_match("*", "a/b"));
}

TEST_CASE("rules: default deny, users, groups, anonymous, authenticated, everyone") {
    AccessPolicy p(rules_config(), true);
    Principal anon, alice{"alice", true}, bob{"bob", true}, carol{"carol", true};
    CHECK(p.allows(anon, "public/x", Action::pull));
    CHECK(p.allows(bob, "public/a/b", Action::pull));
    CHECK_FALSE(p.allows(alice, "public/x", Action::push));
    CHECK(p.allows(alice, "private/app", Action::pull));
    CHECK(p.allows(alice, "private/app", Action::push));
    CHECK(p.allows(carol, "private/app", Action::pull));
    CHECK_FALSE(p.allows(carol, "private/app", Action::push));
    CHECK_FALSE(p.allows(bob, "private/app", Action::pull));
    CHECK_FALSE(p.allows(anon, "private/app", Action::pull));
    // A Docker Hub pattern without '/' is the official image; anonymous is only the
    // credential-less client.
    CHECK(p.allows(anon, "library/busybox", Action::pull));
    CHECK_FALSE(p.allows(bob, "library/busybox", Action::pull));
    CHECK(p.allows(bob, "team/x/tools", Action::pull));
    CHECK_FALSE(p.allows(anon, "team/x/tools", Action::pull));
    CHECK_FALSE(p.allows(alice, "unlisted/repo", Action::pull));
    CHECK(p.is_passthrough("vendor/a/b"));
    CHECK_FALSE(p.is_passthrough("private/app"));
}

TEST_CASE("htpasswd: bcrypt entries verify, anything else does not") {
    auto h = Htpasswd::parse(kHtpasswd, "htpasswd");
    REQUIRE(h.ok());
    CHECK(h->size() == 2);
    CHECK(h->verify("alice", "pw"));
    CHECK(h->verify("bob", "bobpw"));
    CHECK_FALSE(h->verify("alice", "bobpw"));
    CHECK_FALSE(h->verify("alice", ""));
    CHECK_FALSE(h->verify("mallory", "pw"));
    CHECK_FALSE(h->verify("", ""));
    auto md5 = Htpasswd::parse("x:$apr1$abc$def\n", "f");
    REQUIRE_FALSE(md5.ok());
    CHECK_THAT(md5.error().message, Catch::Contains("f:1") && Catch::Contains("bcrypt"));
    CHECK_FALSE(Htpasswd::parse("nocolon\n", "f").ok());
}

TEST_CASE("tokens: sign and verify, and every kind of wrong is refused") {
    const std::string key(32, 'k');
    TokenClaims c;
    c.iss = "drayage";
    c.sub = "alice";
    c.aud = "svc";
    c.iat = c.nbf = 1000;
    c.exp = 1300;
    c.access.push_back({"repository", "private/app", {"pull"}});
    std::string t = sign_token(c, key);
    auto ok = verify_token(t, key, "drayage", "svc", 1100);
    REQUIRE(ok.ok());
    CHECK(ok->sub == "alice");
    REQUIRE(ok->access.size() == 1);
    CHECK(ok->access[0].name == "private/app");
    CHECK(ok->typ == "access");

    CHECK_FALSE(verify_token(t, std::string(32, 'x'), "drayage", "svc", 1100).ok());
    CHECK_FALSE(verify_token(t, key, "other", "svc", 1100).ok());
    CHECK_FALSE(verify_token(t, key, "drayage", "other", 1100).ok());
    CHECK_FALSE(verify_token(t, key, "drayage", "svc", 1400).ok());  // expired
    CHECK_FALSE(verify_token(t, key, "drayage", "svc", 900).ok());   // not yet valid
    CHECK_FALSE(verify_token("a.b", key, "drayage", "svc", 1100).ok());
    CHECK_FALSE(verify_token("", key, "drayage", "svc", 1100).ok());
    // Payload swapped under the same signature.
    auto dot1 = t.find('.'), dot2 = t.rfind('.');
    TokenClaims wider = c;
    wider.access[0].actions = {"pull", "push"};
    std::string other = sign_token(wider, key);
    std::string spliced =
        t.substr(0, dot1 + 1) +
        other.substr(other.find('.') + 1, other.rfind('.') - other.find('.') - 1) + t.substr(dot2);
    CHECK_FALSE(verify_token(spliced, key, "drayage", "svc", 1100).ok());
    // alg none.
    std::string none =
        base64url_encode(R"({"alg":"none"})") + "." + t.substr(dot1 + 1, dot2 - dot1 - 1) + ".";
    CHECK_FALSE(verify_token(none, key, "drayage", "svc", 1100).ok());
}

TEST_CASE("scopes parse, normalise and skip what is malformed") {
    auto s = parse_scopes(
        "repository:Busybox:pull repository:a/b:pull,push registry:catalog:* "
        "repository:a%2Fb:pull bogus repository:x/y:",
        true);
    REQUIRE(s.size() == 3);
    CHECK(s[0].name == "library/busybox");
    CHECK(s[1].actions == std::vector<std::string>{"pull", "push"});
    CHECK(s[2].type == "registry");
    CHECK(scope_string(s[1]) == "repository:a/b:pull,push");
}

TEST_CASE("base64url round trips") {
    for (std::string v : {"", "f", "fo", "foo", "foob", "fooba", "foobar", "\xff\xfe\x00"}) {
        CHECK(*base64url_decode(base64url_encode(v)) == v);
    }
    CHECK_FALSE(base64url_decode("a+b").has_value());
}

TEST_CASE("base64url decodes only the one encoding of some bytes") {
    CHECK(*base64url_decode("Zm9v") == "foo");
    CHECK(*base64url_decode("Zg") == "f");    // 2 characters: 1 byte, 4 unused bits
    CHECK(*base64url_decode("Zm8") == "fo");  // 3 characters: 2 bytes, 2 unused bits
    // Padding, in any amount.
    for (const char* s : {"Zg==", "Zg=", "Zm8=", "Zm9v=", "Zm9v==", "="}) {
        INFO(s);
        CHECK_FALSE(base64url_decode(s).has_value());
    }
    // Characters outside the base64url alphabet, the standard alphabet's included.
    for (const char* s : {"Zm9+", "Zm9/", "Zm 9v", "Zm9v\n", "Zm.9"}) {
        INFO(s);
        CHECK_FALSE(base64url_decode(s).has_value());
    }
    // Nonzero unused low bits: "Zh".."Zv" and "Zm9".."Zm_" would decode to "f" and "fo" too.
    for (const char* s : {"Zh", "Zv", "Zm9", "Zm_"}) {
        INFO(s);
        CHECK_FALSE(base64url_decode(s).has_value());
    }
    CHECK_FALSE(base64url_decode("Z").has_value());  // no byte string encodes to 1 character
}

TEST_CASE("a JWT whose signature is spelled another way is refused") {
    const std::string key(40, 'k');
    TokenClaims c;
    c.iss = "drayage";
    c.aud = "svc";
    c.exp = 2000;
    std::string token = sign_token(c, key);
    REQUIRE(verify_token(token, key, "drayage", "svc", 1000).ok());
    // A 32-byte HMAC is 43 characters: the last holds 4 bits of the signature and 2 unused.
    std::string sig = token.substr(token.rfind('.') + 1);
    REQUIRE(sig.size() == 43);
    const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string low_bit = token;
    low_bit.back() = alphabet[alphabet.find(token.back()) ^ 1];
    for (const std::string& t : {token + "==", token + "=", low_bit, token + " ", token + "\n"}) {
        INFO(t);
        auto r = verify_token(t, key, "drayage", "svc", 1000);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "TOKEN_INVALID");
    }
}

TEST_CASE("path tricks never reach the rules as another repository's name") {
    const std::string digest = "sha256:" + std::string(64, 'a');
    const std::vector<std::string> paths = {"/v2/private%2Fapp/manifests/v1",
                                            "/v2/public/../private/app/manifests/v1",
                                            "/v2/public/x/../../private/app/blobs/" + digest,
                                            "/v2/private//app/manifests/v1",
                                            "/v2//private/app/manifests/v1",
                                            "/v2/PRIVATE/app/manifests/v1",
                                            "/v2/./private/app/manifests/v1",
                                            "/v2/public%2F..%2Fprivate/app/manifests/v1"};
    for (const std::string& path : paths) {
        INFO(path);
        // Refused by the route grammar, never reinterpreted as another name.
        CHECK_FALSE(parse_route(path).ok());
        // And a name that got through spelled so would not survive normalisation either.
        auto name = std::string_view(path).substr(4);
        name = name.substr(
            0, name.rfind(path.find("/blobs/") != std::string::npos ? "/blobs/" : "/manifests/"));
        auto n = normalize_repository(name, false);
        // Upper case is the one spelling folded rather than refused: onto the same repository.
        if (n) CHECK(*n == "private/app");
    }
    // A name under public/ stays under public/.
    auto r = parse_route("/v2/public/x/blobs/sha256:" + std::string(64, 'b'));
    REQUIRE(r.ok());
    CHECK(r->name == "public/x");
}

TEST_CASE("hit workers admit anonymous and Bearer reads, also while the rules reload") {
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("drayage-auth-test-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string key(40, 'k');
    { std::ofstream(dir / "token.key") << key; }
    config::AuthConfig c = rules_config();
    c.token_key = (dir / "token.key").string();
    auto created = Authenticator::create(c, false, false);
    REQUIRE(created);
    Authenticator& auth = **created;

    auto now = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    auto token = [&](std::string sub, std::string repo, std::string typ, std::string_view k) {
        TokenClaims t;
        t.iss = "drayage";
        t.aud = "drayage";
        t.sub = std::move(sub);
        t.iat = t.nbf = now - 10;
        t.exp = now + 300;
        t.typ = std::move(typ);
        t.access.push_back({"repository", std::move(repo), {"pull"}});
        return sign_token(t, k);
    };
    auto request = [](std::string authorization) {
        http::Request r;
        if (!authorization.empty()) r.headers.emplace_back("Authorization", authorization);
        return r;
    };
    const http::Request alice = request("Bearer " + token("alice", "private/app", "access", key));
    const http::Request anon = request("");

    auto a = auth.admit_hit(alice, "private/app");
    REQUIRE(a);
    CHECK(a->repo == "private/app");
    CHECK(a->user == "alice");
    CHECK_FALSE(auth.admit_hit(alice, "private/other"));  // not in the token
    CHECK_FALSE(auth.admit_hit(anon, "private/app"));
    auto pub = auth.admit_hit(anon, "public/x");
    REQUIRE(pub);
    CHECK(pub->user.empty());
    CHECK(auth.admit_hit(anon, "busybox"));
    CHECK_FALSE(auth.admit_hit(anon, "public/../private/app"));  // invalid: the loop answers
    // Left to the loop: Basic credentials, bad tokens, refresh tokens.
    CHECK_FALSE(auth.admit_hit(request("Basic YWxpY2U6cHc="), "public/x"));
    CHECK_FALSE(auth.admit_hit(
        request("Bearer " + token("alice", "private/app", "access", std::string(40, 'x'))),
        "private/app"));
    CHECK_FALSE(auth.admit_hit(request("Bearer " + token("alice", "private/app", "refresh", key)),
                               "private/app"));
    CHECK_FALSE(auth.admit_hit(request("Digest x"), "public/x"));

    // Other threads admit while the loop reloads the rules back and forth: every answer is one
    // of the two rule sets' (ThreadSanitizer checks the rest).
    config::AuthConfig without_private = c;
    without_private.rules.erase(without_private.rules.begin() + 1);
    std::atomic<bool> stop{false};
    std::atomic<int> admitted{0}, refused{0}, wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&] {
            while (!stop.load()) {
                auto got = auth.admit_hit(alice, "private/app");
                if (got && got->user == "alice" && got->repo == "private/app") {
                    ++admitted;
                } else if (!got) {
                    ++refused;
                } else {
                    ++wrong;
                }
                if (!auth.admit_hit(anon, "public/x")) ++wrong;
            }
        });
    }
    // Until the other threads have seen both rule sets (which ones they catch is up to the
    // scheduler), bounded.
    for (int i = 0; i < 1'000'000 && (admitted + refused < 3000 || admitted == 0 || refused == 0);
         ++i)
        REQUIRE(auth.reload(i % 2 == 0 ? without_private : c));
    REQUIRE(auth.reload(without_private));
    stop = true;
    for (auto& t : threads)
        t.join();
    CHECK(wrong == 0);
    CHECK(admitted > 0);
    CHECK(refused > 0);
    CHECK_FALSE(auth.admit_hit(alice, "private/app"));  // the last rules have no private rule
    fs::remove_all(dir);
}

TEST_CASE("passwords are checked off the loop, once per credentials, and the answers kept") {
    namespace fs = std::filesystem;
    evthread_use_pthreads();  // as main() does: the verifier threads wake the loop
    fs::path dir =
        fs::temp_directory_path() / ("drayage-verifier-test-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    { std::ofstream(dir / "htpasswd") << kHtpasswd; }
    config::AuthConfig c = rules_config();
    c.htpasswd_path = (dir / "htpasswd").string();
    auto created = Authenticator::create(c, false, false);
    REQUIRE(created);
    std::unique_ptr<Authenticator> auth = std::move(*created);
    event_base* base = event_base_new();
    REQUIRE(base != nullptr);
    REQUIRE(auth->start_verifier(base, 2));

    auto request = [](std::string authorization) {
        http::Request r;
        if (!authorization.empty()) r.headers.emplace_back("Authorization", authorization);
        return r;
    };
    auto basic = [&](const std::string& user_pw_base64) {
        return request("Basic " + user_pw_base64);
    };
    auto checks = [](const char* result) {
        return metrics::global()
            .counter("drayage_auth_password_checks_total", "", {{"result", result}})
            .value();
    };
    auto run_until = [&](const std::function<bool()>& done) {
        for (int i = 0; i < 10'000 && !done(); ++i) {
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return done();
    };
    const std::uint64_t ok0 = checks("ok");
    const std::uint64_t wrong0 = checks("wrong");

    // Nothing to check: at once.
    int ran = 0;
    auth->prepare(request(""), [&](bool ready) { ran += ready ? 1 : 100; });
    auth->prepare(request("Bearer abc"), [&](bool ready) { ran += ready ? 1 : 100; });
    auth->prepare(request("Basic !!!"),
                  [&](bool ready) { ran += ready ? 1 : 100; });  // malformed: identify() refuses it
    CHECK(ran == 3);

    // New credentials: not on the caller's thread; two asking at once share one bcrypt.
    ran = 0;
    const http::Request alice = basic("YWxpY2U6cHc=") /* alice:pw */;
    auth->prepare(alice, [&](bool ready) { ran += ready ? 1 : 100; });
    auth->prepare(alice, [&](bool ready) { ran += ready ? 1 : 100; });
    CHECK(ran == 0);
    REQUIRE(run_until([&] { return ran == 2; }));
    CHECK(checks("ok") == ok0 + 1);
    CHECK(auth->identify(alice).kind == Identity::Kind::basic);
    auth->prepare(alice, [&](bool ready) { ran += ready ? 1 : 100; });  // known now
    CHECK(ran == 3);

    // A wrong password is checked once too, and then refused without bcrypt.
    const http::Request wrong = basic("YWxpY2U6bm9wZQ==") /* alice:nope */;
    auth->prepare(wrong, [&](bool ready) { ran += ready ? 1 : 100; });
    CHECK(ran == 3);
    REQUIRE(run_until([&] { return ran == 4; }));
    CHECK(checks("wrong") == wrong0 + 1);
    CHECK(auth->identify(wrong).kind == Identity::Kind::bad_credentials);
    auth->prepare(wrong, [&](bool ready) { ran += ready ? 1 : 100; });
    CHECK(ran == 5);
    CHECK(checks("wrong") == wrong0 + 1);

    // A reload while a check is under way: the answer is the new file's.
    const http::Request bob = basic("Ym9iOmJvYnB3") /* bob:bobpw */;
    auth->prepare(bob, [&](bool ready) { ran += ready ? 1 : 100; });
    {
        std::ofstream(dir / "htpasswd")
            << "alice:$2y$04$m6vRZdScEsM6jqP3dJnYOu2DKYcE8zKLgNOGsHcOTF9tGDSabVNi2\n";
    }
    REQUIRE(auth->reload(c));  // bob is gone
    REQUIRE(run_until([&] { return ran == 6; }));
    CHECK(auth->identify(bob).kind == Identity::Kind::bad_credentials);
    // The reload forgot every answer: alice is checked again.
    auth->prepare(alice, [&](bool ready) { ran += ready ? 1 : 100; });
    CHECK(ran == 6);
    REQUIRE(run_until([&] { return ran == 7; }));

    // A flood of made-up passwords: past kMaxPendingChecks waiting, the next is turned away at
    // once (the caller answers 503) while the ones in the queue still get their answers.
    int answered = 0;
    int busy = 0;
    const std::uint64_t busy0 = checks("busy");
    for (std::size_t i = 0; i <= Authenticator::kMaxPendingChecks; ++i) {
        auth->prepare_password("mallory", "guess" + std::to_string(i),
                               [&](bool ready) { ++(ready ? answered : busy); });
    }
    CHECK(busy == 1);
    CHECK(checks("busy") == busy0 + 1);
    REQUIRE(
        run_until([&] { return answered == static_cast<int>(Authenticator::kMaxPendingChecks); }));

    // Going away with a check pending: the callback is dropped, never run.
    bool late = false;
    auth->prepare(basic("Y2Fyb2w6eA==") /* carol:x */, [&](bool) { late = true; });
    auth.reset();
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK_FALSE(late);
    event_base_free(base);
    fs::remove_all(dir);
}
