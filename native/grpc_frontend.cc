// The native gRPC front end: grpc++'s callback server owns the sockets, HTTP/2 and the
// per-RPC bookkeeping; Python sees each call as a few events and answers with bytes.
//
// Every method is served generically: messages cross as bytes, and the Python side
// (grpc_native.py) runs the same handlers as the grpc.aio front end. grpc's threads never
// touch Python: they queue events and wake the event loop through an eventfd, once per batch
// of arrivals, and the loop drains them with one call.
//
// A call's life: grpc creates a Call, which reads the first message at once; that read's
// completion is the call's first event (MESSAGE, or END where there was none) and carries
// the method. Later messages are read only when Python asks (read), so HTTP/2 flow control
// holds a client that sends faster than the server reads. Python ends every call it heard of
// exactly once (reply or finish), cancelled or not; grpc's OnDone and that end each hold a
// reference, and the Call is freed when both have let go.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <grpc/support/time.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

enum Kind { MESSAGE = 0, END = 1, CANCELLED = 2, WRITTEN = 3 };

struct Event {
  int kind;
  uint64_t id;
  std::string method;  // the first event of a call only
  double deadline;     // seconds since the epoch; 0 for none (the first event only)
  grpc::ByteBuffer payload;
  bool has_payload;
  // The first event only: when the call began waiting for its message and when it was read
  // (steady clock ns, Python's time.monotonic_ns), for Triton's trace files.
  int64_t wait_start = 0;
  int64_t wait_end = 0;
};

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class Frontend;

class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(Frontend* frontend, grpc::GenericCallbackServerContext* ctx);
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Called from Python (the GIL held, no lock of the frontend's held).
  void Read();
  size_t Write(std::vector<grpc::ByteBuffer>&& buffers);
  bool NotifyBelow(size_t window);
  void Reply(grpc::ByteBuffer&& buffer);
  void Finish(const grpc::Status& status);

  grpc::GenericCallbackServerContext* ctx() const { return ctx_; }
  bool inference() const { return inference_; }

 private:
  void Unref();
  void StartNextWrite(std::unique_lock<std::mutex>& lock);

  Frontend* frontend_;
  grpc::GenericCallbackServerContext* ctx_;
  uint64_t id_;
  int64_t created_ns_;
  bool first_read_ = true;
  bool inference_;  // ModelInfer or ModelStreamInfer (IsInference)
  grpc::ByteBuffer in_;
  std::mutex mu_;
  std::deque<grpc::ByteBuffer> out_;  // out_.front() is being written while writing_
  bool writing_ = false;
  bool finishing_ = false;  // Python ended the call; Finish once the writes are out
  bool finished_ = false;   // Finish (or StartWriteAndFinish) was called
  bool reply_ = false;      // the last write of out_ carries the status (a unary answer)
  size_t notify_below_ = 0;  // Python waits for out_ to shrink below this (0: nobody waits)
  grpc::Status status_;
  std::atomic<int> refs_{2};  // grpc's, until OnDone; Python's, until it ends the call
};

class Service final : public grpc::CallbackGenericService {
 public:
  explicit Service(Frontend* frontend) : frontend_(frontend) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

 private:
  Frontend* frontend_;
};

// TLS for the port: grpc++ reads the certificate files itself, and reads them again every
// refresh_s seconds, so that a rotation reaches new handshakes. The files are inferd's own copies
// of what the flags name (tls.py writes them, and rewrites them on a reload it has checked):
// identity is the certificate chain and the key in one file, replaced in one rename.
struct Tls {
  std::string identity;  // empty: no TLS
  std::string root;      // empty: no client certificates checked
  bool mutual = false;
  int refresh_s = 1;
};

std::shared_ptr<grpc::ServerCredentials> Credentials(const Tls& tls) {
  if (tls.identity.empty()) return grpc::InsecureServerCredentials();
  namespace x = grpc::experimental;
  unsigned refresh = static_cast<unsigned>(tls.refresh_s);
  auto provider = tls.root.empty()
                      ? std::make_shared<x::FileWatcherCertificateProvider>(tls.identity, tls.identity, refresh)
                      : std::make_shared<x::FileWatcherCertificateProvider>(tls.identity, tls.identity, tls.root,
                                                                            refresh);
  x::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.root.empty()) options.watch_root_certs();
  options.set_cert_request_type(tls.mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  return x::TlsServerCredentials(options);
}

class Frontend {
 public:
  Frontend(const std::string& address, const std::vector<std::pair<std::string, int>>& int_args,
           int max_receive, int max_send, const Tls& tls)
      : service_(this) {
    fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error("eventfd failed");
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, Credentials(tls), &port_);
    builder.SetMaxReceiveMessageSize(max_receive);
    builder.SetMaxSendMessageSize(max_send);
    for (const auto& [name, value] : int_args) builder.AddChannelArgument(name, value);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      close(fd_);
      throw std::runtime_error("cannot bind the gRPC port at " + address);
    }
  }

  ~Frontend() {
    if (server_) {
      py::gil_scoped_release release;
      // Dropped without stop() (its loop gone): nothing in Python will end the calls it holds,
      // and Shutdown waits for every call to end. So the calls are ended here, also those that
      // arrive while Shutdown stops the listener.
      std::atomic<bool> stopped{false};
      std::thread stopper([this, &stopped] {
        server_->Shutdown(std::chrono::system_clock::now());
        stopped = true;
      });
      grpc::Status stopping(grpc::StatusCode::UNAVAILABLE, "the server is stopping");
      while (!stopped) {
        FinishAll(stopping);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      stopper.join();
      server_->Wait();
    }
    close(fd_);
  }

  int port() const { return port_; }
  int fd() const { return fd_; }

  uint64_t Register(Call* call) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    uint64_t id = ++next_id_;
    calls_.emplace(id, call);
    if (call->inference()) ++inference_calls_;
    return id;
  }

  void Push(Event&& event) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      wake = events_.empty();
      events_.push_back(std::move(event));
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t n = write(fd_, &one, sizeof one);
      (void)n;  // EAGAIN: the counter is already non-zero, the loop will wake
    }
  }

  // The events queued since the last drain, as (kind, id, method, payload, deadline, waited)
  // tuples; waited is (wait start, wait end) in the first event of a call, else None.
  py::list Drain() {
    uint64_t count;
    ssize_t n = read(fd_, &count, sizeof count);
    (void)n;
    std::deque<Event> events;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events.swap(events_);
    }
    py::list out;
    for (Event& e : events) {
      py::object method = e.method.empty() ? py::object(py::none()) : py::object(py::str(e.method));
      py::object payload = e.has_payload ? py::object(ToBytes(e.payload)) : py::object(py::none());
      py::object deadline = e.deadline > 0 ? py::object(py::float_(e.deadline)) : py::none();
      py::object waited = e.wait_end ? py::object(py::make_tuple(e.wait_start, e.wait_end)) : py::none();
      out.append(py::make_tuple(e.kind, e.id, method, payload, deadline, waited));
    }
    return out;
  }

  Call* Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  // Python's end of a call: after this the id is unknown to Python's calls.
  Call* Take(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(id);
    if (it == calls_.end()) return nullptr;
    Call* call = it->second;
    calls_.erase(it);
    if (call->inference()) --inference_calls_;
    return call;
  }

  void Shutdown(double grace_s) {
    if (!server_) return;
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
    server_->Shutdown(deadline);
  }

  void Wait() {
    if (!server_) return;
    {
      py::gil_scoped_release release;
      server_->Wait();
    }
    server_.reset();
  }

  // End every call Python has not ended (each Take()n as reply/finish would), with status.
  void FinishAll(const grpc::Status& status);

  size_t Active() {
    std::lock_guard<std::mutex> lock(calls_mu_);
    return calls_.size();
  }

  // The active calls that are inference requests: what a request held behind the event loop
  // would be (a health or statistics call can wait that long).
  size_t ActiveInference() {
    std::lock_guard<std::mutex> lock(calls_mu_);
    return inference_calls_;
  }

 private:
  static py::bytes ToBytes(grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    if (!buffer.Dump(&slices).ok()) return py::bytes();
    if (slices.size() == 1) {
      return py::bytes(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size());
    }
    size_t total = 0;
    for (const auto& s : slices) total += s.size();
    PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
    if (bytes == nullptr) throw py::error_already_set();
    char* dst = PyBytes_AS_STRING(bytes);
    for (const auto& s : slices) {
      std::memcpy(dst, s.begin(), s.size());
      dst += s.size();
    }
    return py::reinterpret_steal<py::bytes>(bytes);
  }

  Service service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int fd_ = -1;
  std::mutex events_mu_;
  std::deque<Event> events_;
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, Call*> calls_;
  size_t inference_calls_ = 0;
  uint64_t next_id_ = 0;
};

grpc::ServerGenericBidiReactor* Service::CreateReactor(grpc::GenericCallbackServerContext* ctx) {
  return new Call(frontend_, ctx);
}

double EpochDeadline(grpc::GenericCallbackServerContext* ctx) {
  gpr_timespec d = ctx->raw_deadline();
  if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0) return 0;
  d = gpr_convert_clock_type(d, GPR_CLOCK_REALTIME);
  return static_cast<double>(d.tv_sec) + d.tv_nsec * 1e-9;
}

bool IsInference(const std::string& method) {
  for (const std::string suffix : {"/ModelInfer", "/ModelStreamInfer"}) {
    if (method.size() >= suffix.size() && method.compare(method.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return true;
    }
  }
  return false;
}

Call::Call(Frontend* frontend, grpc::GenericCallbackServerContext* ctx)
    : frontend_(frontend), ctx_(ctx), created_ns_(SteadyNs()), inference_(IsInference(ctx->method())) {
  id_ = frontend_->Register(this);
  StartRead(&in_);
}

void Call::OnReadDone(bool ok) {
  Event e{ok ? MESSAGE : END, id_, {}, 0, {}, ok};
  if (first_read_) {
    first_read_ = false;
    e.method = ctx_->method();
    if (e.method.empty()) e.method = "/";
    e.deadline = EpochDeadline(ctx_);
    e.wait_start = created_ns_;
    e.wait_end = SteadyNs();
  }
  if (ok) e.payload.Swap(&in_);
  frontend_->Push(std::move(e));
}

void Call::Read() { StartRead(&in_); }

void Call::OnCancel() { frontend_->Push(Event{CANCELLED, id_, {}, 0, {}, false}); }

size_t Call::Write(std::vector<grpc::ByteBuffer>&& buffers) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finishing_) return 0;
  for (auto& b : buffers) out_.push_back(std::move(b));
  size_t queued = out_.size();
  if (!writing_) StartNextWrite(lock);
  return queued;
}

bool Call::NotifyBelow(size_t window) {
  // True: fewer than window messages will be queued when WRITTEN arrives, and it will; false:
  // there are fewer already (written meanwhile), nothing to wait for.
  std::lock_guard<std::mutex> lock(mu_);
  if (out_.size() < window || finished_) return false;
  notify_below_ = window;
  return true;
}

void Call::StartNextWrite(std::unique_lock<std::mutex>& lock) {
  // With mu_ held and no write in flight: write out_.front(), or finish once out_ is empty.
  if (!out_.empty()) {
    writing_ = true;
    bool last = reply_ && out_.size() == 1;
    // No buffer hint, even with more queued: grpc completes a hinted write only once something
    // flushes it, and the next write starts only after that completion, so the stream stalled
    // until the client happened to send a frame.
    grpc::ByteBuffer* next = &out_.front();
    if (last) finished_ = true;
    lock.unlock();
    if (last) {
      StartWriteAndFinish(next, grpc::WriteOptions(), status_);
    } else {
      StartWrite(next, grpc::WriteOptions());
    }
    return;
  }
  if (finishing_ && !finished_) {
    finished_ = true;
    grpc::Status status = status_;
    lock.unlock();
    grpc::ServerGenericBidiReactor::Finish(status);
  }
}

void Call::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  writing_ = false;
  if (!out_.empty()) out_.pop_front();
  if (!ok) out_.clear();  // the client is gone; what is queued can never be sent
  // Only a writer that waits for room hears of writes: one event per message written cost the
  // loop a wake-up and a Python tuple for every streamed token.
  bool notify = notify_below_ != 0 && out_.size() < notify_below_;
  if (notify) notify_below_ = 0;
  StartNextWrite(lock);
  if (notify) frontend_->Push(Event{WRITTEN, id_, {}, 0, {}, false});
}

void Call::Reply(grpc::ByteBuffer&& buffer) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finishing_) return;
  finishing_ = true;
  reply_ = true;
  status_ = grpc::Status::OK;
  out_.push_back(std::move(buffer));
  if (!writing_) StartNextWrite(lock);
  if (lock.owns_lock()) lock.unlock();
  Unref();
}

void Call::Finish(const grpc::Status& status) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finishing_) return;
  finishing_ = true;
  status_ = status;
  if (!writing_) StartNextWrite(lock);
  if (lock.owns_lock()) lock.unlock();
  Unref();
}

void Call::OnDone() { Unref(); }

void Frontend::FinishAll(const grpc::Status& status) {
  std::vector<Call*> left;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& entry : calls_) left.push_back(entry.second);
    calls_.clear();
    inference_calls_ = 0;
  }
  for (Call* call : left) call->Finish(status);
}

void Call::Unref() {
  if (refs_.fetch_sub(1) == 1) delete this;
}

grpc::ByteBuffer FromBytes(const py::bytes& data) {
  char* buffer;
  Py_ssize_t size;
  PyBytes_AsStringAndSize(data.ptr(), &buffer, &size);
  grpc::Slice slice(buffer, static_cast<size_t>(size));
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

PYBIND11_MODULE(_native_grpc, m) {
  m.doc() = "grpc++ callback server for inferd's gRPC front end (see grpc_native.py)";
  m.attr("MESSAGE") = static_cast<int>(MESSAGE);
  m.attr("END") = static_cast<int>(END);
  m.attr("CANCELLED") = static_cast<int>(CANCELLED);
  m.attr("WRITTEN") = static_cast<int>(WRITTEN);
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Frontend>(m, "Frontend")
      .def(py::init([](const std::string& address, const std::vector<std::pair<std::string, int>>& int_args,
                       int max_receive, int max_send, const std::string& tls_identity, const std::string& tls_root,
                       bool tls_mutual, int tls_refresh_s) {
             return new Frontend(address, int_args, max_receive, max_send,
                                 Tls{tls_identity, tls_root, tls_mutual, tls_refresh_s});
           }),
           py::arg("address"), py::arg("int_args"), py::arg("max_receive"), py::arg("max_send"),
           py::arg("tls_identity") = "", py::arg("tls_root") = "", py::arg("tls_mutual") = false,
           py::arg("tls_refresh_s") = 1)
      .def_property_readonly("port", &Frontend::port)
      .def_property_readonly("fd", &Frontend::fd)
      .def("drain", &Frontend::Drain)
      .def("active", &Frontend::Active)
      .def("active_inference", &Frontend::ActiveInference)
      .def(
          "read",
          [](Frontend& f, uint64_t id) {
            Call* call = f.Find(id);
            if (call != nullptr) call->Read();
          },
          "ask for the next message of a stream (an event MESSAGE or END answers)")
      .def(
          "write",
          [](Frontend& f, uint64_t id, const py::bytes& data) -> size_t {
            Call* call = f.Find(id);
            if (call == nullptr) return 0;
            std::vector<grpc::ByteBuffer> one;
            one.push_back(FromBytes(data));
            return call->Write(std::move(one));
          },
          "queue a message of a stream; returns the messages queued and not yet written")
      .def(
          "write_many",
          [](Frontend& f, uint64_t id, const py::list& messages) -> size_t {
            Call* call = f.Find(id);
            if (call == nullptr) return 0;
            std::vector<grpc::ByteBuffer> buffers;
            buffers.reserve(messages.size());
            for (const auto& m : messages) buffers.push_back(FromBytes(m.cast<py::bytes>()));
            return call->Write(std::move(buffers));
          },
          "queue messages of a stream in one call; returns the messages queued and not yet written")
      .def(
          "notify_written",
          [](Frontend& f, uint64_t id, size_t window) -> bool {
            Call* call = f.Find(id);
            return call != nullptr && call->NotifyBelow(window);
          },
          "ask for one WRITTEN event once fewer than window messages are queued; false when "
          "there are fewer already (or the call is over) and no event will come")
      .def(
          "reply",
          [](Frontend& f, uint64_t id, const py::bytes& data) {
            Call* call = f.Take(id);
            if (call != nullptr) call->Reply(FromBytes(data));
          },
          "answer a unary call with one message and status OK; ends the call")
      .def(
          "finish",
          [](Frontend& f, uint64_t id, int code, const std::string& message) {
            Call* call = f.Take(id);
            if (call != nullptr) {
              call->Finish(grpc::Status(static_cast<grpc::StatusCode>(code), message));
            }
          },
          "end a call with a status, after the messages already queued")
      .def(
          "metadata",
          [](Frontend& f, uint64_t id) {
            py::list out;
            Call* call = f.Find(id);
            if (call == nullptr) return out;
            for (const auto& [key, value] : call->ctx()->client_metadata()) {
              std::string k(key.data(), key.size());
              bool binary = k.size() > 4 && k.compare(k.size() - 4, 4, "-bin") == 0;
              py::object v = binary ? py::object(py::bytes(value.data(), value.size()))
                                    : py::object(py::str(std::string(value.data(), value.size())));
              out.append(py::make_tuple(py::str(k), v));
            }
            return out;
          },
          "the client's metadata of a call, as (key, value) pairs")
      .def(
          "peer",
          [](Frontend& f, uint64_t id) -> std::string {
            Call* call = f.Find(id);
            return call == nullptr ? std::string() : call->ctx()->peer();
          })
      .def("shutdown", &Frontend::Shutdown, "stop accepting; cancel what is left after grace_s")
      .def("wait", &Frontend::Wait, "block until every call has ended, then free the server");
}
