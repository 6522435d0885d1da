// The Authenticator's verifier threads: bcrypt off the event loop (see start_verifier in
// auth.hpp).
#include <event2/event.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "drayage/registry/auth.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry {

struct Authenticator::Verifier {
    struct Job {
        std::string key;  // Authenticator::credentials_key
        std::string user;
        std::string password;
        std::shared_ptr<const Htpasswd> file;
        std::uint64_t generation = 0;
        bool ok = false;  // the answer, once checked
    };

    Authenticator* auth = nullptr;
    event* answered_ev = nullptr;  // on the loop: answers are waiting

    std::mutex mu;
    std::condition_variable wake;
    std::deque<Job> jobs;      // to check
    std::vector<Job> answers;  // checked, for the loop
    bool stopping = false;
    std::vector<std::thread> threads;

    // Loop only: what runs once the credentials under a key have an answer.
    std::map<std::string, std::vector<std::function<void(bool)>>> waiting;

    metrics::Counter& checked_ok = counter("ok");
    metrics::Counter& checked_wrong = counter("wrong");
    metrics::Counter& overflow = counter("busy");  // refused: too many checks pending

    static metrics::Counter& counter(const char* result) {
        return metrics::global().counter(
            "drayage_auth_password_checks_total",
            "Passwords checked with bcrypt (answers are then kept for 60 s), by result; busy: "
            "not checked, too many checks were pending (the client got 503).",
            {{"result", result}});
    }

    ~Verifier() {
        {
            std::lock_guard lock(mu);
            stopping = true;
        }
        wake.notify_all();
        for (auto& t : threads)
            t.join();
        if (answered_ev != nullptr) event_free(answered_ev);
    }

    void run() {
        for (;;) {
            Job job;
            {
                std::unique_lock lock(mu);
                wake.wait(lock, [&] { return stopping || !jobs.empty(); });
                if (stopping) return;
                job = std::move(jobs.front());
                jobs.pop_front();
            }
            job.ok = job.file->verify(job.user, job.password);
            {
                std::lock_guard lock(mu);
                if (stopping) return;
                answers.push_back(std::move(job));
            }
            event_active(answered_ev, EV_READ, 0);  // thread-safe: evthread_use_pthreads()
        }
    }

    void submit(Job job) {
        {
            std::lock_guard lock(mu);
            jobs.push_back(std::move(job));
        }
        wake.notify_one();
    }

    // On the loop.
    static void answered_cb(evutil_socket_t, short, void* arg) {
        auto* self = static_cast<Verifier*>(arg);
        std::vector<Job> batch;
        {
            std::lock_guard lock(self->mu);
            batch.swap(self->answers);
        }
        Authenticator& auth = *self->auth;
        for (Job& job : batch) {
            if (job.generation != auth.generation_) {
                // Checked against a file SIGHUP has replaced since: check again.
                job.file = auth.htpasswd_;
                job.generation = auth.generation_;
                self->submit(std::move(job));
                continue;
            }
            (job.ok ? self->checked_ok : self->checked_wrong).inc();
            auth.remember(job.key, job.ok);
            auto it = self->waiting.find(job.key);
            if (it == self->waiting.end()) continue;
            std::vector<std::function<void(bool)>> then = std::move(it->second);
            self->waiting.erase(it);
            for (auto& fn : then)
                fn(true);
        }
    }
};

void Authenticator::VerifierStop::operator()(Verifier* v) const {
    delete v;
}

Status Authenticator::start_verifier(event_base* base, int threads) {
    if (verifier_) return make_error("AUTH_CONFIG", "the password verifier is already running");
    std::unique_ptr<Verifier, VerifierStop> v(new Verifier);
    v->auth = this;
    v->answered_ev = event_new(base, -1, 0, &Verifier::answered_cb, v.get());
    if (v->answered_ev == nullptr) {
        return make_error("AUTH_CONFIG", "cannot create the password verifier's event");
    }
    // Signals belong to the main loop: the verifier threads run with all of them blocked.
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < std::max(threads, 1); ++i)
        v->threads.emplace_back([raw = v.get()] { raw->run(); });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    verifier_ = std::move(v);
    return {};
}

void Authenticator::prepare(const http::Request& request, std::function<void(bool)> then) {
    auto creds = verifier_ ? basic_credentials(request) : std::nullopt;
    if (!creds) return then(true);
    prepare_password(creds->first, creds->second, std::move(then));
}

void Authenticator::prepare_password(std::string_view user, std::string_view password,
                                     std::function<void(bool)> then) {
    if (!verifier_) return then(true);
    std::string key = credentials_key(user, password);
    if (known_answer(key)) return then(true);
    auto it = verifier_->waiting.find(key);
    if (it != verifier_->waiting.end()) {
        it->second.push_back(std::move(then));  // already being checked: wait for that answer
        return;
    }
    if (verifier_->waiting.size() >= kMaxPendingChecks) {
        verifier_->overflow.inc();
        return then(false);
    }
    verifier_->waiting[key].push_back(std::move(then));
    verifier_->submit(Verifier::Job{key, std::string(user), std::string(password), htpasswd_,
                                    generation_, false});
}

}  // namespace drayage::registry
