#include "drayage/util/log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

using drayage::log::json_escape;

TEST_CASE("json_escape keeps JSON valid for any input") {
    CHECK(json_escape("plain") == "plain");
    CHECK(json_escape("a\"b") == "a\\\"b");
    CHECK(json_escape("back\\slash") == "back\\\\slash");
    CHECK(json_escape("line\nbreak\ttab") == "line\\nbreak\\ttab");
    CHECK(json_escape(std::string_view("\x01\x1f", 2)) == "\\u0001\\u001f");
    CHECK(json_escape("caf\xc3\xa9") == "caf\xc3\xa9");  // UTF-8 passes through
}

TEST_CASE("log levels parse by name") {
    spdlog::level::level_enum l{};
    CHECK(drayage::log::parse_level("debug", l));
    CHECK(l == spdlog::level::debug);
    CHECK(drayage::log::parse_level("error", l));
    CHECK(l == spdlog::level::err);
    CHECK_FALSE(drayage::log::parse_level("loud", l));
}

namespace {

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Polls until `done` holds, up to ~10 s: the sink writes from its own thread.
bool eventually(const std::function<bool()>& done) {
    for (int i = 0; i < 1000 && !done(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return done();
}

}  // namespace

TEST_CASE(
    "log lines are written in batches off the caller, warnings at once, to the reopened "
    "file after a reopen") {
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("drayage-log-test-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    drayage::log::Options o;
    o.file = (dir / "drayage.log").string();
    REQUIRE(drayage::log::init(o));
    spdlog::info("first line");
    spdlog::warn("a warning");
    REQUIRE(eventually([&] { return read_file(o.file).find("a warning") != std::string::npos; }));
    std::string text = read_file(o.file);
    CHECK(text.find("first line") < text.find("a warning"));  // in order
    CHECK(text.find(" warning a warning\n") != std::string::npos);

    // logrotate: the file is moved away, reopen() starts a new one; nothing is lost or doubled.
    fs::rename(o.file, dir / "drayage.log.1");
    spdlog::info("before reopen");
    REQUIRE(drayage::log::reopen());
    spdlog::info("after reopen");
    REQUIRE(
        eventually([&] { return read_file(o.file).find("after reopen") != std::string::npos; }));
    std::string both = read_file(dir / "drayage.log.1") + read_file(o.file);
    for (const char* line : {"first line", "a warning", "before reopen", "after reopen"}) {
        CHECK(both.find(line) != std::string::npos);
        CHECK(both.find(line) == both.rfind(line));
    }
    fs::remove_all(dir);
}

TEST_CASE(
    "a log destination that stops reading never blocks the caller; lines are dropped and "
    "counted") {
    namespace fs = std::filesystem;
    fs::path dir =
        fs::temp_directory_path() / ("drayage-log-fifo-test-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    fs::path fifo = dir / "fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // The reader end is opened (so the sink's open does not wait) and not read until the end.
    int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(reader >= 0);
    drayage::log::Options o;
    o.file = fifo.string();
    REQUIRE(drayage::log::init(o));
    // 40 MiB of lines into a pipe of 64 KiB nobody reads: every call returns (a blocked call
    // would hang this test), and what does not fit in the sink's queue is dropped.
    const std::string pad(400, 'x');
    for (int i = 0; i < 100'000; ++i)
        spdlog::info("line {} {}", i, pad);
    // Read everything now; the sink reports what it dropped once it can write again.
    std::string got;
    REQUIRE(eventually([&] {
        char buf[65536];
        ssize_t n;
        while ((n = ::read(reader, buf, sizeof buf)) > 0)
            got.append(buf, static_cast<std::size_t>(n));
        return got.find("log lines dropped") != std::string::npos;
    }));
    CHECK(got.find("line 0 ") != std::string::npos);  // the first lines made it
    // Back to stderr: the old sink writes what it still holds and closes the FIFO, so read on
    // until the end.
    REQUIRE(::fcntl(reader, F_SETFL, 0) == 0);
    std::thread drain([reader] {
        char buf[65536];
        while (::read(reader, buf, sizeof buf) > 0) {
        }
    });
    CHECK(drayage::log::init({}));
    drain.join();
    ::close(reader);
    fs::remove_all(dir);
}
