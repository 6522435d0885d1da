// The writer thread's batches: Writer::process() and its steps. Each batch is applied in one
// write transaction: prepare() charges it against max_size and reads the hasher's verdicts,
// write_batch() applies it (apply(): one handler per op kind), retrying after MDB_MAP_FULL or a
// full disk, and report() posts what the loop learns from it (committed chunks, finished fills
// and documents, links, barriers). A batch that cannot be written fails every fill it touches.
#include <algorithm>
#include <string_view>

#include "cache_impl.hpp"
#include "drayage/util/log.hpp"

namespace drayage::cache {

// Per op of a batch: what the pre-pass decided (and apply_fill_finish() may revise).
struct Writer::Prepared {
    bool skip = false;
    bool ok = true;
    Error error;
};

// Per fill touched by a batch: what to report.
struct Writer::FillReport {
    std::uint64_t released = 0;
    std::uint32_t committed = 0;
    bool touched = false;
};

void Writer::process(std::vector<WriterOp>& batch) {
    std::vector<Prepared> prep(batch.size());
    const BatchCharge charge = prepare(batch, prep);
    make_room(charge.incoming);
    Status result = write_batch(batch, prep, charge.incoming);
    if (result) impl_.commits.fetch_add(1);
    note_write_result(result, charge.blob_data);
    report(batch, prep, result);
}

Writer::BatchCharge Writer::prepare(std::vector<WriterOp>& batch, std::vector<Prepared>& prep) {
    BatchCharge charge;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        WriterOp& op = batch[i];
        Prepared& p = prep[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_begin: {
                auto fs = std::make_unique<FillState>();
                fs->digest = op.digest;
                fills_[op.fill_id] = std::move(fs);
                charge.incoming += kMetaCharge;
                break;
            }
            case WriterOp::Kind::fill_chunk: {
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end() || it->second->failed) {
                    p.skip = true;
                    break;
                }
                charge.incoming += store_.chunk_charge(op.data->size());
                charge.blob_data = true;
                break;
            }
            case WriterOp::Kind::fill_finish: {
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end() || it->second->failed) {
                    p.skip = true;
                    break;
                }
                p.ok = op.verified;
                p.error = op.verify_error;
                break;
            }
            case WriterOp::Kind::document: {
                p.ok = op.verified;
                p.error = op.verify_error;
                charge.incoming += kMetaCharge + store_.chunk_charge(op.data->size());
                break;
            }
            default: break;
        }
    }
    return charge;
}

Status Writer::write_batch(std::vector<WriterOp>& batch, std::vector<Prepared>& prep,
                           std::uint64_t incoming) {
    Status result;
    for (int attempt = 0; attempt < 4; ++attempt) {
        result = Status{};
        auto txn = store_.begin_write();
        if (!txn) {
            result = txn.error();
            break;
        }
        result = apply_batch(**txn, batch, prep);
        txn->reset();  // end this transaction before make_room() begins another
        impl_.pins.release_claims();
        if (result) break;
        std::uint64_t shrink_by = 0;
        if (result.error().code == kErrMapFull) {
            impl_.map_full_retries.fetch_add(1);
            shrink_by = std::max(incoming, store_.max_size() / 8);
        } else if (!disk_full(incoming)) {
            break;
        }
        // Map or disk full: make room (make_room() fits the cache to the disk, and lets LMDB
        // reuse what it evicted) and try again.
        garbage_ = true;
        make_room(incoming, shrink_by);
    }
    return result;
}

Status Writer::apply_batch(StoreWrite& w, std::vector<WriterOp>& batch,
                           std::vector<Prepared>& prep) {
    for (std::size_t i = 0; i < batch.size(); ++i) {
        if (prep[i].skip) continue;
        if (auto st = apply(w, batch[i], prep[i]); !st) return st;
    }
    if (garbage_) {
        auto n = w.collect_garbage(impl_.options.gc_batch_chunks);
        if (!n) return n.error();
        auto more = w.has_garbage();
        if (!more) return more.error();
        garbage_ = *more;
    }
    std::uint64_t charged = w.charged_bytes();
    Status st = w.commit();
    if (st) impl_.charged_gauge.set(static_cast<std::int64_t>(charged));
    return st;
}

Status Writer::apply(StoreWrite& w, const WriterOp& op, Prepared& p) {
    switch (op.kind) {
        case WriterOp::Kind::fill_begin: return apply_fill_begin(w, op);
        case WriterOp::Kind::fill_chunk:
            return w.put_chunk(fills_.at(op.fill_id)->blob_id, op.index, *op.data);
        case WriterOp::Kind::fill_finish: return apply_fill_finish(w, op, p);
        case WriterOp::Kind::fill_abort: return apply_fill_abort(w, op);
        case WriterOp::Kind::touch: return apply_touch(w, op);
        case WriterOp::Kind::document: return p.ok ? apply_document(w, op) : Status{};
        case WriterOp::Kind::link: {
            std::size_t z = op.digest.find('\0');
            std::string_view all(op.digest);
            return w.link(all.substr(0, z), all.substr(z + 1));
        }
        case WriterOp::Kind::unlink: return apply_unlink(w, op);
        case WriterOp::Kind::tag_put: return w.put_tag(op.digest, op.tag);
        case WriterOp::Kind::tag_drop: return w.drop_tag(op.digest);
        case WriterOp::Kind::tags_expire: {
            auto n = w.drop_tags_checked_before(op.now);
            if (!n) return n.error();
            if (*n > 0) spdlog::info("cache: dropped {} expired tag records", *n);
            return Status{};
        }
        case WriterOp::Kind::evict: return apply_evict(w, op);
        case WriterOp::Kind::barrier:
        case WriterOp::Kind::stop: break;
    }
    return Status{};
}

Status Writer::apply_fill_begin(StoreWrite& w, const WriterOp& op) {
    FillState& fs = *fills_.at(op.fill_id);
    auto old = w.drop_blob(op.digest);  // a stale record of the same digest
    if (!old) return old.error();
    auto id = w.new_blob_id();
    if (!id) return id.error();
    fs.blob_id = *id;
    BlobMeta m;
    m.digest = op.digest;
    m.blob_id = *id;
    m.state = BlobState::filling;
    m.created = m.last_access = op.now;
    return w.put_meta(m);
}

Status Writer::apply_fill_finish(StoreWrite& w, const WriterOp& op, Prepared& p) {
    FillState& fs = *fills_.at(op.fill_id);
    auto m = w.get_meta(fs.digest);
    if (!m) return m.error();
    bool ours = *m && (*m)->blob_id == fs.blob_id;
    if (p.ok && !ours) {
        p.ok = false;
        p.error = make_error(kErrGone, fs.digest + " was evicted while filling");
    }
    if (p.ok) {
        BlobMeta meta = **m;
        meta.size = op.size;
        meta.state = BlobState::complete;
        return w.put_meta(meta);
    }
    if (ours) {
        if (auto d = w.drop_blob(fs.digest); !d) return d.error();
    }
    return Status{};
}

Status Writer::apply_fill_abort(StoreWrite& w, const WriterOp& op) {
    auto it = fills_.find(op.fill_id);
    if (it == fills_.end()) return Status{};
    auto m = w.get_meta(it->second->digest);
    if (!m) return m.error();
    if (*m && (*m)->blob_id == it->second->blob_id && (*m)->state == BlobState::filling) {
        if (auto d = w.drop_blob(it->second->digest); !d) return d.error();
    }
    return Status{};
}

Status Writer::apply_touch(StoreWrite& w, const WriterOp& op) {
    auto m = w.get_meta(op.digest);
    if (!m) return m.error();
    if (!*m || (*m)->state != BlobState::complete) return Status{};
    BlobMeta meta = **m;
    meta.last_access = std::max(meta.last_access, op.now);
    meta.hits += op.hits;
    return w.put_meta(meta);
}

Status Writer::apply_document(StoreWrite& w, const WriterOp& op) {
    auto m = w.get_meta(op.digest);
    if (!m) return m.error();
    if (*m && (*m)->state == BlobState::complete) return Status{};  // same bytes already
    if (*m) {
        if (auto d = w.drop_blob(op.digest); !d) return d.error();
    }
    auto id = w.new_blob_id();
    if (!id) return id.error();
    const std::string& bytes = *op.data;
    const std::uint64_t cs = store_.chunk_size();
    for (std::uint64_t off = 0, idx = 0; off < bytes.size(); off += cs, ++idx) {
        std::string_view piece = std::string_view(bytes).substr(off, cs);
        if (auto st = w.put_chunk(*id, static_cast<std::uint32_t>(idx), piece); !st) return st;
    }
    BlobMeta meta;
    meta.digest = op.digest;
    meta.blob_id = *id;
    meta.size = bytes.size();
    meta.state = BlobState::complete;
    meta.created = meta.last_access = op.now;
    meta.media_type = op.media_type;
    return w.put_meta(meta);
}

Status Writer::apply_evict(StoreWrite& w, const WriterOp& op) {
    auto m = w.get_meta(op.digest);
    if (!m) return m.error();
    if (!*m || (*m)->state != BlobState::complete) return Status{};
    if (!impl_.pins.claim_for_eviction(op.digest)) return Status{};
    if (auto d = w.drop_blob(op.digest); !d) return d.error();
    garbage_ = true;
    return Status{};
}

// The registry deleted the digest in a repository: the link and the repository's tags naming it
// go, and the blob (or document) with them once no repository links it. A blob a reader holds
// stays, unlinked, until it is evicted: no repository serves it without a new proof.
Status Writer::apply_unlink(StoreWrite& w, const WriterOp& op) {
    std::size_t z = op.digest.find('\0');
    std::string_view all(op.digest);
    std::string_view repo = all.substr(0, z);
    std::string_view digest = all.substr(z + 1);
    if (auto u = w.unlink(repo, digest); !u) return u.error();
    if (auto t = w.drop_tags_naming(repo, digest); !t) return t.error();
    auto linked = w.has_links(digest);
    if (!linked) return linked.error();
    if (*linked) return Status{};
    WriterOp drop;
    drop.digest = std::string(digest);
    return apply_evict(w, drop);
}

void Writer::report(const std::vector<WriterOp>& batch, const std::vector<Prepared>& prep,
                    const Status& result) {
    std::vector<Completion> done;
    std::map<std::uint64_t, FillReport> reports = report_fills(batch, prep, result, done);
    std::vector<std::string> to_drop = report_ops(batch, prep, result, done);
    if (!result) drop_failed_fills(result, reports, std::move(to_drop));
    post(std::move(done));
}

std::map<std::uint64_t, Writer::FillReport> Writer::report_fills(const std::vector<WriterOp>& batch,
                                                                 const std::vector<Prepared>& prep,
                                                                 const Status& result,
                                                                 std::vector<Completion>& done) {
    std::map<std::uint64_t, FillReport> reports;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        const WriterOp& op = batch[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_begin: reports[op.fill_id].touched = true; break;
            case WriterOp::Kind::fill_chunk: {
                FillReport& r = reports[op.fill_id];
                r.touched = true;
                r.released += op.data->size();
                if (result && !prep[i].skip) r.committed = op.index + 1;
                break;
            }
            default: break;
        }
    }
    for (auto& [fid, r] : reports) {
        auto it = fills_.find(fid);
        Completion c;
        c.kind = Completion::Kind::committed;
        c.fill_id = fid;
        c.bytes_released = r.released;
        c.committed = r.committed;
        if (it != fills_.end()) c.blob_id = it->second->blob_id;
        done.push_back(std::move(c));
        if (!result && it != fills_.end() && !it->second->failed) {
            it->second->failed = true;
            Completion f;
            f.kind = Completion::Kind::fill_done;
            f.fill_id = fid;
            f.ok = false;
            f.error = result.error();
            done.push_back(std::move(f));
        }
    }
    return reports;
}

std::vector<std::string> Writer::report_ops(const std::vector<WriterOp>& batch,
                                            const std::vector<Prepared>& prep, const Status& result,
                                            std::vector<Completion>& done) {
    std::vector<std::string> to_drop;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        const WriterOp& op = batch[i];
        const Prepared& p = prep[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_finish: {
                if (p.skip) break;
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end()) break;
                if (!result) {
                    to_drop.push_back(it->second->digest);
                    break;  // reported by report_fills()
                }
                Completion c;
                c.kind = Completion::Kind::fill_done;
                c.fill_id = op.fill_id;
                c.blob_id = it->second->blob_id;
                c.ok = p.ok;
                c.error = p.error;
                done.push_back(std::move(c));
                fills_.erase(it);
                break;
            }
            case WriterOp::Kind::fill_abort: fills_.erase(op.fill_id); break;
            case WriterOp::Kind::document: {
                Completion c;
                c.kind = Completion::Kind::document_done;
                c.id = op.id;
                c.digest = op.digest;
                c.ok = result && p.ok;
                if (!p.ok)
                    c.error = p.error;
                else if (!result)
                    c.error = result.error();
                done.push_back(std::move(c));
                break;
            }
            case WriterOp::Kind::link:
            case WriterOp::Kind::unlink: {
                Completion c;
                c.kind = op.kind == WriterOp::Kind::link ? Completion::Kind::linked
                                                         : Completion::Kind::unlinked;
                c.digest = op.digest;
                done.push_back(std::move(c));
                break;
            }
            case WriterOp::Kind::barrier: {
                Completion c;
                c.kind = Completion::Kind::barrier;
                c.id = op.id;
                done.push_back(std::move(c));
                break;
            }
            default: break;
        }
    }
    return to_drop;
}

void Writer::drop_failed_fills(const Status& result,
                               const std::map<std::uint64_t, FillReport>& reports,
                               std::vector<std::string> to_drop) {
    spdlog::error("cache: write failed, fills in this batch dropped: {}",
                  result.error().to_string());
    // Chunks committed by earlier batches of the failed fills: drop them.
    for (auto& [fid, fs] : fills_) {
        if (fs->failed && reports.count(fid) > 0) to_drop.push_back(fs->digest);
    }
    if (auto txn = store_.begin_write(); txn) {
        for (const std::string& d : to_drop) {
            auto m = (*txn)->get_meta(d);
            if (m && *m && (*m)->state == BlobState::filling) (void)(*txn)->drop_blob(d);
        }
        if ((*txn)->commit()) garbage_ = true;
    }
}

}  // namespace drayage::cache
