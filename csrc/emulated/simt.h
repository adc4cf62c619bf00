// A small SIMT emulator: lets the CUDA kernel sources of csrc/cuda/ compile with the host
// compiler and run on the CPU, lane by lane, for tests (docs/design.md §8). Not part of the wheel.
//
// Model. A launch runs its blocks one after another. Each thread of a block is a cooperative
// fiber (ucontext) with its own threadIdx; warps are 32 consecutive threads. A fiber runs until
// it reaches a shuffle or __syncthreads, then the scheduler moves on to the next runnable fiber.
// A shuffle is a collective of exactly the lanes named in its mask: a lane waits only for those
// lanes, so lane groups of one warp may loop different numbers of times (rows of different
// length), as on a GPU. The last lane to arrive completes the exchange for all of them.
//
// What a GPU leaves undefined is reported as an error (a C++ exception from the launch, with
// the file and line of the shuffle): a mask that omits the calling lane or names a lane that
// has exited, is waiting at a different shuffle (other site, mask, width or kind) or at a
// barrier; a read from a lane outside the mask; a block that can make no progress; an invalid
// launch configuration. Memory errors are left to AddressSanitizer (the library is built with
// -fsanitize=address,undefined; "device" buffers are host buffers of exact size).
#pragma once
#include <ucontext.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __maxnreg__(...)

namespace simt {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// Where a shuffle or barrier sits in the source: lanes meet only at the same site.
struct Site {
  const char* file;
  int line;
};

enum class Kind { Idx, Xor, Barrier };
enum class State { Fresh, Runnable, Waiting, Released, Exited };

constexpr int kWarp = 32;
constexpr size_t kValueBytes = 16;

struct Thread {
  ucontext_t context;
  Dim3 idx;
  State state = State::Fresh;
  // The collective this thread waits at (valid while Waiting or Released).
  Site site{};
  Kind kind = Kind::Idx;
  unsigned mask = 0;
  int width = 0, operand = 0;
  alignas(16) unsigned char value[kValueBytes];
  alignas(16) unsigned char result[kValueBytes];
  void* fake_stack = nullptr;  // AddressSanitizer's state of this fiber while switched out
};

// Runs the blocks of one launch. One per OS thread (thread_local), so several Python threads
// may launch at once.
class Scheduler {
 public:
  static Scheduler& get() {
    thread_local Scheduler scheduler;
    return scheduler;
  }

  Thread& current() { return threads_[current_]; }
  const Dim3& block_idx() const { return block_idx_; }
  const Dim3& block_dim() const { return block_dim_; }
  const Dim3& grid_dim() const { return grid_dim_; }

  void run(Dim3 grid, Dim3 block, const std::function<void()>& body) {
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
      std::ostringstream message;
      message << "invalid launch configuration: grid (" << grid.x << ", " << grid.y << ", "
              << grid.z << "), block (" << block.x << ", " << block.y << ", " << block.z << ")";
      throw std::runtime_error(message.str());
    }
    if (running_) throw std::runtime_error("a kernel launched from inside a kernel");
    running_ = true;
    grid_dim_ = grid;
    block_dim_ = block;
    body_ = &body;
    error_.clear();
    for (unsigned z = 0; z < grid.z && error_.empty(); ++z)
      for (unsigned y = 0; y < grid.y && error_.empty(); ++y)
        for (unsigned x = 0; x < grid.x && error_.empty(); ++x) run_block({x, y, z});
    running_ = false;
    if (!error_.empty()) throw std::runtime_error(error_);
  }

  // A shuffle of `bytes` of value among the lanes of `mask`; returns the source lane's value.
  void shuffle(Site site, Kind kind, unsigned mask, const void* value, size_t bytes, int operand,
               int width, void* result) {
    Thread& me = current();
    const int lane = current_ % kWarp;
    if (width < 1 || width > kWarp || (width & (width - 1)) != 0)
      fail(at(site) + "shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]");
    if (!(mask >> lane & 1u))
      fail(at(site) + "lane " + std::to_string(lane) + " calls a shuffle whose mask " + hex(mask) +
                     " omits itself");
    me.site = site;
    me.kind = kind;
    me.mask = mask;
    me.width = width;
    me.operand = operand;
    std::memcpy(me.value, value, bytes);
    arrive(me);
    std::memcpy(result, me.result, bytes);
  }

  void syncthreads(Site site) {
    Thread& me = current();
    me.site = site;
    me.kind = Kind::Barrier;
    me.mask = 0;
    arrive(me);
  }

 private:
  Scheduler() = default;
  ~Scheduler() {
    if (stacks_ != nullptr) munmap(stacks_, kSlotBytes * capacity_);
  }

  // ASan's swapcontext clears the shadow of the whole target stack on every switch, so stacks
  // are kept small; each has a guard page below it, so an overflow faults instead of writing
  // into the next fiber's stack.
  static constexpr size_t kStackBytes = 64 * 1024;
  static constexpr size_t kGuardBytes = 4096;
  static constexpr size_t kSlotBytes = kGuardBytes + kStackBytes;

  static std::string hex(unsigned mask) {
    std::ostringstream out;
    out << "0x" << std::hex << mask;
    return out.str();
  }

  static std::string at(Site site) {
    return std::string("at ") + site.file + ":" + std::to_string(site.line) + ": ";
  }

  std::string where(const Thread& t) const {
    std::ostringstream out;
    if (t.kind == Kind::Barrier) {
      out << "__syncthreads at " << t.site.file << ":" << t.site.line;
    } else {
      out << (t.kind == Kind::Xor ? "__shfl_xor_sync" : "__shfl_sync") << "(mask " << hex(t.mask)
          << ", width " << t.width << ") at " << t.site.file << ":" << t.site.line;
    }
    return out.str();
  }

  static bool same_collective(const Thread& a, const Thread& b) {
    return a.kind == b.kind && a.mask == b.mask && a.width == b.width &&
           a.site.line == b.site.line && std::strcmp(a.site.file, b.site.file) == 0;
  }

  std::string lane_name(int index) const {
    std::ostringstream out;
    out << "thread " << index << " (warp " << index / kWarp << ", lane " << index % kWarp
        << ") of block (" << block_idx_.x << ", " << block_idx_.y << ", " << block_idx_.z << ")";
    return out.str();
  }

  // Records the first error and returns to the scheduler for good.
  [[noreturn]] void fail(const std::string& what) {
    if (error_.empty()) error_ = "emulated CUDA: " + lane_name(current_) + " " + what;
    switch_to_scheduler(/*exiting=*/true);
    __builtin_unreachable();
  }

  // The current thread waits at its collective; the last one in completes it.
  void arrive(Thread& me) {
    me.state = State::Waiting;
    const int warp_base = current_ - current_ % kWarp, my_lane = current_ % kWarp;
    // A lane of this warp that waits for this one at another collective would wait forever.
    for (int lane = 0; lane < kWarp && warp_base + lane < count_; ++lane) {
      const Thread& t = threads_[warp_base + lane];
      if (lane != my_lane && t.state == State::Waiting && t.kind != Kind::Barrier &&
          (t.mask >> my_lane & 1u) && !same_collective(t, me))
        fail("arrives at " + where(me) + " while lane " + std::to_string(lane) +
                          ", whose mask names it, waits at " + where(t));
    }
    if (me.kind == Kind::Barrier) {
      try_release_barrier();
    } else {
      for (int lane = 0; lane < kWarp; ++lane) {
        if (!(me.mask >> lane & 1u)) continue;
        const int k = warp_base + lane;
        if (k >= count_)
          fail(at(me.site) + "mask " + hex(me.mask) + " names lane " + std::to_string(lane) +
                            ", which this block does not have");
        const Thread& t = threads_[k];
        if (t.state == State::Exited)
          fail(at(me.site) + "mask " + hex(me.mask) + " names lane " + std::to_string(lane) +
                            ", which has exited");
        if (t.state == State::Waiting && !same_collective(t, me))
          fail(at(me.site) + "mask " + hex(me.mask) + " names lane " + std::to_string(lane) +
                            ", which waits at " + where(t));
      }
      try_complete_shuffle(me);
    }
    if (me.state == State::Waiting) switch_to_scheduler(/*exiting=*/false);
    me.state = State::Runnable;  // released by the lane that completed the collective
  }

  void try_complete_shuffle(Thread& me) {
    const int warp_base = current_ - current_ % kWarp;
    for (int lane = 0; lane < kWarp; ++lane)
      if ((me.mask >> lane & 1u) && threads_[warp_base + lane].state != State::Waiting) return;
    for (int lane = 0; lane < kWarp; ++lane) {
      if (!(me.mask >> lane & 1u)) continue;
      Thread& t = threads_[warp_base + lane];
      // PTX shfl.sync with c = ((32 - width) << 8) | 31: a segment of `width` lanes; xor
      // reads past the segment's end return the lane's own value.
      const int segment = lane & ~(t.width - 1);
      int source = lane;
      if (t.kind == Kind::Idx) {
        source = segment | (t.operand & (t.width - 1));
      } else {
        const int partner = lane ^ (t.operand & (kWarp - 1));
        if (partner <= segment + t.width - 1) source = partner;
      }
      if (!(me.mask >> source & 1u))
        fail(at(t.site) + "lane " + std::to_string(lane) + " reads lane " + std::to_string(source) +
                         ", which mask " + hex(me.mask) + " does not name");
      std::memcpy(t.result, threads_[warp_base + source].value, kValueBytes);
    }
    for (int lane = 0; lane < kWarp; ++lane)
      if (me.mask >> lane & 1u) threads_[warp_base + lane].state = State::Released;
  }

  void try_release_barrier() {
    for (int k = 0; k < count_; ++k) {
      const Thread& t = threads_[k];
      if (t.state != State::Exited && !(t.state == State::Waiting && t.kind == Kind::Barrier))
        return;
    }
    for (int k = 0; k < count_; ++k)
      if (threads_[k].state == State::Waiting) threads_[k].state = State::Released;
  }

  // A thread that exits while lanes wait for it at a shuffle leaves them undefined.
  void on_exit() {
    Thread& me = current();
    me.state = State::Exited;
    const int warp_base = current_ - current_ % kWarp;
    const int lane = current_ % kWarp;
    for (int other = 0; other < kWarp && warp_base + other < count_; ++other) {
      const Thread& t = threads_[warp_base + other];
      if (t.state == State::Waiting && t.kind != Kind::Barrier && (t.mask >> lane & 1u)) {
        std::ostringstream out;
        out << "exits while lane " << other << " waits for it at " << where(t);
        fail(out.str());
      }
    }
    try_release_barrier();
  }

  static void entry() {
    Scheduler& self = get();
    self.finish_switch(nullptr);
    (*self.body_)();
    self.on_exit();
    self.switch_to_scheduler(/*exiting=*/true);
  }

  void ensure_stacks(int count) {
    if (count <= capacity_) return;
    if (stacks_ != nullptr) munmap(stacks_, kSlotBytes * capacity_);
    void* memory = mmap(nullptr, kSlotBytes * count, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::runtime_error("emulated CUDA: no memory for stacks");
    stacks_ = static_cast<char*>(memory);
    capacity_ = count;
    for (int k = 0; k < count; ++k) mprotect(stacks_ + kSlotBytes * k, kGuardBytes, PROT_NONE);
  }

  char* stack_of(int k) const { return stacks_ + kSlotBytes * k + kGuardBytes; }

  void run_block(Dim3 block_idx) {
    block_idx_ = block_idx;
    count_ = int(block_dim_.x * block_dim_.y * block_dim_.z);
    ensure_stacks(count_);
    threads_.assign(count_, Thread{});
    for (int k = 0; k < count_; ++k) {
      Thread& t = threads_[k];
      t.idx = {unsigned(k) % block_dim_.x, unsigned(k) / block_dim_.x % block_dim_.y,
               unsigned(k) / (block_dim_.x * block_dim_.y)};
    }
    for (int live = count_; live > 0 && error_.empty();) {
      bool progressed = false;
      live = 0;
      for (int k = 0; k < count_ && error_.empty(); ++k) {
        Thread& t = threads_[k];
        if (t.state == State::Fresh) start(k);
        if (t.state == State::Runnable || t.state == State::Released) {
          resume(k);
          progressed = true;
        }
        live += threads_[k].state != State::Exited;
      }
      if (error_.empty() && live > 0 && !progressed) report_deadlock();
    }
  }

  void start(int k) {
    Thread& t = threads_[k];
    char* stack = stack_of(k);
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(stack, kStackBytes);  // frames abandoned by an earlier error
#endif
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = stack;
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = nullptr;
    makecontext(&t.context, &Scheduler::entry, 0);
    t.state = State::Runnable;
  }

  void resume(int k) {
    current_ = k;
    start_switch(&scheduler_fake_stack_, stack_of(k), kStackBytes);
    swapcontext(&scheduler_context_, &threads_[k].context);
    finish_switch(scheduler_fake_stack_);
  }

  void switch_to_scheduler(bool exiting) {
    Thread& me = current();
    start_switch(exiting ? nullptr : &me.fake_stack, scheduler_stack_bottom_,
                 scheduler_stack_size_);
    if (exiting) setcontext(&scheduler_context_);
    swapcontext(&me.context, &scheduler_context_);
    finish_switch(me.fake_stack);
  }

  // AddressSanitizer must know which stack is live (it is a no-op without ASan).
  void start_switch(void** fake_stack, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
    (void)fake_stack, (void)bottom, (void)size;
#endif
  }

  void finish_switch(void* fake_stack) {
#if defined(__SANITIZE_ADDRESS__)
    const void* bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
    // The first switch into a fiber comes from the scheduler: it tells the scheduler's stack.
    if (scheduler_stack_bottom_ == nullptr) {
      scheduler_stack_bottom_ = bottom;
      scheduler_stack_size_ = size;
    }
#else
    (void)fake_stack;
#endif
  }

  void report_deadlock() {
    std::ostringstream out;
    for (int k = 0, shown = 0; k < count_ && shown < 4; ++k) {
      if (threads_[k].state != State::Waiting) continue;
      out << (shown++ ? "; " : "") << lane_name(k) << " waits at " << where(threads_[k]);
    }
    error_ = "emulated CUDA: deadlock: " + out.str();
  }

  std::vector<Thread> threads_;
  int count_ = 0, current_ = 0, capacity_ = 0;
  char* stacks_ = nullptr;
  ucontext_t scheduler_context_;
  void* scheduler_fake_stack_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;
  size_t scheduler_stack_size_ = 0;
  Dim3 block_idx_, block_dim_, grid_dim_;
  const std::function<void()>* body_ = nullptr;
  bool running_ = false;
  std::string error_;
};

template <typename V>
V shuffle(Site site, Kind kind, unsigned mask, V value, int operand, int width) {
  static_assert(std::is_trivially_copyable<V>::value && sizeof(V) <= kValueBytes,
                "shuffles move trivially copyable values of at most 16 bytes");
  V result;
  Scheduler::get().shuffle(site, kind, mask, &value, sizeof(V), operand, width, &result);
  return result;
}

template <typename V>
V shfl_sync(Site site, unsigned mask, V value, int source, int width = kWarp) {
  return shuffle(site, Kind::Idx, mask, value, source, width);
}

template <typename V>
V shfl_xor_sync(Site site, unsigned mask, V value, int lane_mask, int width = kWarp) {
  return shuffle(site, Kind::Xor, mask, value, lane_mask, width);
}

// kernel<<<grid, block>>>(args...): arguments are copied once, as a launch copies them.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), Dim3 grid, Dim3 block, A&&... args) {
  std::tuple<typename std::decay<P>::type...> copies(std::forward<A>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, copies); };
  Scheduler::get().run(grid, block, body);
}

}  // namespace simt

#define SIMT_SITE (::simt::Site{__FILE__, __LINE__})
#define threadIdx (::simt::Scheduler::get().current().idx)
#define blockIdx (::simt::Scheduler::get().block_idx())
#define blockDim (::simt::Scheduler::get().block_dim())
#define gridDim (::simt::Scheduler::get().grid_dim())
#define __shfl_sync(...) ::simt::shfl_sync(SIMT_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::simt::shfl_xor_sync(SIMT_SITE, __VA_ARGS__)
#define __syncthreads() ::simt::Scheduler::get().syncthreads(SIMT_SITE)
