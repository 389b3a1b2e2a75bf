//! Running Rust work without the Ruby GVL, interruptibly and panic-safe.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use magnus::{Error, Ruby};
use pe_failover_core::cancel::CancelToken;

use crate::helpers::errors;

struct Call<F, R> {
    func: Option<F>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn trampoline<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R,
{
    // SAFETY: `data` is the `Call` that `without_gvl` passed in, alive and
    // exclusively ours for the duration of this call.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(func) = call.func.take() {
        // A panic must not unwind into Ruby's C frames: catch it here.
        call.result = Some(catch_unwind(AssertUnwindSafe(func)));
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `CancelToken` borrowed by `without_gvl`, which
    // outlives the blocking call this function may interrupt.
    let token = unsafe { &*(data as *const CancelToken) };
    token.cancel();
}

/// Runs `func` with the GVL released, so other Ruby threads run meanwhile.
///
/// When Ruby wants this thread back (Ctrl-C, `Thread#raise`, `Timeout`) it
/// trips `token`, which the core's long operations check. Afterwards pending
/// interrupts are processed, so Ctrl-C raises `Interrupt` as usual. A panic
/// becomes a `PuppetX::PeFailover::InternalError`, never `fatal`.
///
/// `func` and its result must be `Send`: the compiler thereby forbids Ruby
/// values inside it, which must not be touched without the GVL.
pub fn without_gvl<F, R>(ruby: &Ruby, token: &CancelToken, func: F) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let mut call = Call {
        func: Some(func),
        result: None,
    };
    // SAFETY: both pointers stay valid until rb_thread_call_without_gvl
    // returns; the trampoline touches no Ruby state.
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(trampoline::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            Some(unblock),
            token as *const CancelToken as *mut c_void,
        );
    }
    let outcome = call.result.take();
    // Let Ruby act on Ctrl-C or Thread#raise now that we hold the GVL again.
    ruby.thread_check_ints()?;
    match outcome {
        Some(Ok(value)) => Ok(value),
        Some(Err(payload)) => Err(errors::panic_error(ruby, payload)),
        // Ruby skipped the call because an interrupt was already pending.
        None => Err(errors::to_ruby(ruby, pe_failover_core::Error::cancelled())),
    }
}

/// Runs `func` (which holds the GVL) and turns a panic into an
/// `InternalError` instead of letting magnus raise `fatal`.
pub fn guard<F, R>(ruby: &Ruby, func: F) -> Result<R, Error>
where
    F: FnOnce() -> Result<R, Error>,
{
    match catch_unwind(AssertUnwindSafe(func)) {
        Ok(result) => result,
        Err(payload) => Err(errors::panic_error(ruby, payload)),
    }
}
