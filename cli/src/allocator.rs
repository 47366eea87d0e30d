//! The process's allocator: jemalloc, for every allocation of the process, librdkafka's
//! included (its `malloc` and `free` replace glibc's at link time). With `--output kafka://`,
//! events are allocated on the exporter's thread and freed on librdkafka's: glibc then finds
//! its per-thread cache empty and takes the arena's lock for nearly every allocation; jemalloc
//! halves the tracer's CPU per exported event (README, "Shipping events to Kafka or NATS
//! JetStream").
//!
//! Wrapped so that an allocation that fails (a memory limit: `ulimit -v`, a cgroup's) ends the
//! process with one line on stderr and exit 1, as any error, instead of Rust's abort
//! (`memory allocation of N bytes failed`, SIGABRT, exit 134). Nothing in bpfstream recovers
//! from a failed allocation (no `try_reserve`), so ending at the first one loses nothing.
//!
//! Two more places run out of memory outside the allocator's sight, and are covered here too:
//! - the main thread's stack, which the kernel grows on demand: a growth past the
//!   address-space limit is a SIGSEGV (exit 139). [`reserve_stack`] grows it once, at the first
//!   instruction, after checking that the limit leaves room for it;
//! - glibc's registration of a thread's TLS destructors (`__cxa_thread_atexit_impl`, which Rust
//!   calls as a thread starts), whose `calloc` failing is "Fatal glibc error: failed to register
//!   TLS destructor" and an abort. The executable's own [`__cxa_thread_atexit_impl`] checks that
//!   the thread can allocate that node first (one line and exit 1 if not), then hands over to
//!   glibc's, which finds the node just freed in the thread's cache.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use tikv_jemallocator::Jemalloc;

/// jemalloc, ending the process cleanly when it has no memory to give.
pub struct Allocator;

// SAFETY: every call goes to jemalloc with the caller's arguments; a null result, which the
// contract allows, ends the process instead of being returned.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { Jemalloc.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { Jemalloc.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { Jemalloc.realloc(ptr, layout, new_size) }, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }
}

fn checked(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        out_of_memory("an allocation of", size);
    }
    ptr
}

/// The main thread's stack that [`reserve_stack`] makes sure of (a run uses about 330 KiB in a
/// debug build).
const STACK_RESERVE: usize = 1 << 20;

/// Grows the main thread's stack by [`STACK_RESERVE`] now, so that it never has to grow later,
/// when an address-space limit may have been reached. A limit too low for it is the one line of
/// [`out_of_memory`].
pub fn reserve_stack() {
    if address_space_left().is_some_and(|left| left < 2 * STACK_RESERVE) {
        out_of_memory("growing the stack by", STACK_RESERVE);
    }
    touch_stack();
}

/// Touches every page of a [`STACK_RESERVE`] frame, from the top down as the stack grows.
#[inline(never)]
fn touch_stack() {
    let mut frame = [0u8; STACK_RESERVE];
    for page in frame.chunks_mut(4096).rev() {
        // SAFETY: a write to a byte of a live local array; volatile, so that it is not elided.
        unsafe { std::ptr::write_volatile(&mut page[0], 1) };
    }
    std::hint::black_box(&frame);
}

/// Bytes the address-space limit (`ulimit -v`) leaves (`None`: no limit).
fn address_space_left() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    Some((limit.rlim_cur as usize).saturating_sub(pages * page))
}

/// glibc's `struct dtor_list` node (a destructor, its object, the next node and the DSO's link
/// map): what its `__cxa_thread_atexit_impl` allocates.
const TLS_DTOR_NODE: usize = 4 * std::mem::size_of::<usize>();

type ThreadAtexit = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, *mut c_void) -> libc::c_int;

/// glibc's `__cxa_thread_atexit_impl`, found past this executable's.
static GLIBC_THREAD_ATEXIT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Registers a thread-local destructor (called by Rust's runtime when a thread first uses a
/// thread local that needs dropping): glibc's, once this thread is known to get its node.
///
/// # Safety
/// The contract of glibc's `__cxa_thread_atexit_impl`, passed on unchanged.
#[no_mangle]
pub unsafe extern "C" fn __cxa_thread_atexit_impl(
    dtor: unsafe extern "C" fn(*mut c_void),
    object: *mut c_void,
    dso: *mut c_void,
) -> libc::c_int {
    // SAFETY: calloc/free of a node-sized block; jemalloc keeps the freed block in this
    // thread's cache, where glibc's calloc of the same size finds it.
    unsafe {
        let node = libc::calloc(1, TLS_DTOR_NODE);
        if node.is_null() {
            out_of_memory("registering a thread's destructors:", TLS_DTOR_NODE);
        }
        libc::free(node);
    }
    let mut glibc = GLIBC_THREAD_ATEXIT.load(Ordering::Acquire);
    if glibc.is_null() {
        // SAFETY: dlsym(3) with a NUL-terminated name; RTLD_NEXT finds libc's definition.
        glibc = unsafe { libc::dlsym(libc::RTLD_NEXT, c"__cxa_thread_atexit_impl".as_ptr()) };
        GLIBC_THREAD_ATEXIT.store(glibc, Ordering::Release);
    }
    if glibc.is_null() {
        return -1;
    }
    // SAFETY: the symbol is glibc's function of this very signature.
    unsafe { std::mem::transmute::<*mut c_void, ThreadAtexit>(glibc)(dtor, object, dso) }
}

/// Set by the first thread that found no memory: it says so and ends the process.
static OUT_OF_MEMORY: AtomicBool = AtomicBool::new(false);

/// Writes one line with write(2) (nothing here may allocate) and ends the process with exit 1;
/// another thread that runs out of memory meanwhile waits for that end, so the line is whole
/// and printed once.
fn out_of_memory(what: &str, size: usize) -> ! {
    if !OUT_OF_MEMORY.swap(true, Ordering::SeqCst) {
        let mut number = itoa::Buffer::new();
        for part in [
            "bpfstream: out of memory: ",
            what,
            " ",
            number.format(size),
            " bytes failed (the address-space limit, ulimit -v, or the memory cgroup's is too low)\n",
        ] {
            // SAFETY: write(2) from a live slice to stderr; a failed write changes nothing.
            unsafe { libc::write(libc::STDERR_FILENO, part.as_ptr().cast(), part.len()) };
        }
        // SAFETY: _exit ends the process without running anything that could allocate.
        unsafe { libc::_exit(1) };
    }
    loop {
        // SAFETY: pause(2) takes no arguments; the first thread's _exit ends this one.
        unsafe { libc::pause() };
    }
}
