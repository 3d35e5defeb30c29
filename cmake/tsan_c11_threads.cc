// Linked into every executable of a ThreadSanitizer build (OUTBOXD_TSAN).
//
// Debian's librdkafka uses C11 threads (thrd_create, mtx_lock, cnd_wait, ...),
// which glibc implements by calling its internal pthread functions directly:
// the sanitizer's pthread interceptors never see them. Its threads then crash
// at their first allocation inside the sanitizer runtime, and its locks are
// invisible to it (every queue hand-over looks like a race). These
// definitions take precedence over glibc's for every library of the process
// and go through the intercepted pthread calls; glibc's mtx_t and cnd_t are
// a pthread_mutex_t and a pthread_cond_t.

#include <pthread.h>
#include <threads.h>

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <new>

namespace {

struct Start {
  thrd_start_t func;
  void* arg;
};

void* Trampoline(void* p) {
  const Start start = *static_cast<Start*>(p);
  delete static_cast<Start*>(p);
  return reinterpret_cast<void*>(static_cast<std::intptr_t>(start.func(start.arg)));
}

}  // namespace

extern "C" {

int thrd_create(thrd_t* thr, thrd_start_t func, void* arg) {
  auto* start = new (std::nothrow) Start{func, arg};
  if (start == nullptr) return thrd_nomem;
  pthread_t t;
  if (pthread_create(&t, nullptr, Trampoline, start) != 0) {
    delete start;
    return thrd_error;
  }
  *thr = t;
  return thrd_success;
}

int thrd_join(thrd_t thr, int* res) {
  void* value = nullptr;
  if (pthread_join(thr, &value) != 0) return thrd_error;
  if (res != nullptr) *res = static_cast<int>(reinterpret_cast<std::intptr_t>(value));
  return thrd_success;
}

int thrd_detach(thrd_t thr) { return pthread_detach(thr) == 0 ? thrd_success : thrd_error; }

static_assert(sizeof(mtx_t) == sizeof(pthread_mutex_t) && sizeof(cnd_t) == sizeof(pthread_cond_t));

static pthread_mutex_t* Mutex(mtx_t* m) { return reinterpret_cast<pthread_mutex_t*>(m); }
static pthread_cond_t* Cond(cnd_t* c) { return reinterpret_cast<pthread_cond_t*>(c); }
static int Result(int rc) { return rc == 0 ? thrd_success : rc == ETIMEDOUT ? thrd_timedout : thrd_error; }

int mtx_init(mtx_t* m, int type) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  if ((type & mtx_recursive) != 0) pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  const int rc = pthread_mutex_init(Mutex(m), &attr);
  pthread_mutexattr_destroy(&attr);
  return Result(rc);
}
int mtx_lock(mtx_t* m) { return Result(pthread_mutex_lock(Mutex(m))); }
int mtx_trylock(mtx_t* m) {
  const int rc = pthread_mutex_trylock(Mutex(m));
  return rc == EBUSY ? thrd_busy : Result(rc);
}
int mtx_timedlock(mtx_t* m, const struct timespec* until) { return Result(pthread_mutex_timedlock(Mutex(m), until)); }
int mtx_unlock(mtx_t* m) { return Result(pthread_mutex_unlock(Mutex(m))); }
void mtx_destroy(mtx_t* m) { pthread_mutex_destroy(Mutex(m)); }

int cnd_init(cnd_t* c) { return Result(pthread_cond_init(Cond(c), nullptr)); }
int cnd_signal(cnd_t* c) { return Result(pthread_cond_signal(Cond(c))); }
int cnd_broadcast(cnd_t* c) { return Result(pthread_cond_broadcast(Cond(c))); }
int cnd_wait(cnd_t* c, mtx_t* m) { return Result(pthread_cond_wait(Cond(c), Mutex(m))); }
int cnd_timedwait(cnd_t* c, mtx_t* m, const struct timespec* until) {
  return Result(pthread_cond_timedwait(Cond(c), Mutex(m), until));
}
void cnd_destroy(cnd_t* c) { pthread_cond_destroy(Cond(c)); }

void call_once(once_flag* flag, void (*func)()) {
  static_assert(sizeof(once_flag) == sizeof(pthread_once_t));
  pthread_once(reinterpret_cast<pthread_once_t*>(flag), func);
}

}  // extern "C"
