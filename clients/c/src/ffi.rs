//! The boundary with C: every entry point runs inside [`entry`] (panics
//! stopped, the per-thread last error kept), arguments are checked before
//! use, out parameters are reset before anything can fail, and results are
//! copied into `malloc`ed buffers that `mecha_free` releases.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::status::{Code, Failure, Outcome};

thread_local! {
    /// The message of this thread's last failed call (`mecha_last_error`).
    /// Per thread, so that threads sharing a client never see each other's
    /// errors, and so that a failed `mecha_connect` (no client yet) has a
    /// place for its message.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Replaces this thread's last error. A message holding a NUL byte is cut
/// there, which is where C would stop reading it anyway.
pub(crate) fn set_last_error(message: &str) {
    let bytes = message.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = CString::new(&bytes[..end]).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down, when no C
    // code can read the message any more.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = text;
        }
    });
}

/// A pointer to this thread's last error, valid until the next call that
/// replaces it (the next entry point run on this thread).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| match slot.try_borrow() {
            Ok(text) => text.as_ptr(),
            Err(_) => c"".as_ptr(),
        })
        .unwrap_or(c"".as_ptr())
}

/// Runs the body of an entry point that returns a status: clears the last
/// error, stops any panic at the boundary (unwinding into C is undefined
/// behaviour, and since Rust 1.81 aborts the whole process), and records the
/// message of a failure.
///
/// `AssertUnwindSafe` is sound here because after a panic nothing of the
/// body's state is used again except through the client's locks, which are
/// taken poison-tolerantly: the Rust client keeps its own invariants behind
/// its own mutexes, and the caller is told with MECHA_ERR_PANIC.
pub(crate) fn entry(body: impl FnOnce() -> Outcome) -> Code {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Code::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(payload) => {
            set_last_error(&format!(
                "bug in libmecha (please report it): {}",
                panic_text(payload.as_ref())
            ));
            // Dropping the payload runs arbitrary Drop code, which could
            // panic again; that second panic is stopped too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Code::ErrPanic
        }
    }
}

/// Runs an entry point that returns no status (close, free, name lookups):
/// a panic gives `fallback`, with the message kept for `mecha_last_error`.
pub(crate) fn quiet<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            set_last_error(&format!(
                "bug in libmecha (please report it): {}",
                panic_text(payload.as_ref())
            ));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            fallback
        }
    }
}

/// The text of a panic payload (`panic!` carries a `&str` or a `String`).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// `mecha_client`: the blocking Rust client behind a lock.
///
/// The blocking client is `Sync`, and its current-thread runtime lets several
/// threads `block_on` at once (one drives the connection, the others' answers
/// are delivered by it), so calls take the lock shared and run concurrently,
/// pipelined on the one connection. Only `mecha_set_timeout`, which replaces
/// the client's handle, takes it exclusively.
pub struct MechaClient {
    inner: RwLock<mecha_client::blocking::Client>,
}

// The header promises that threads may share a client: that rests on this
// type being `Send + Sync`, which this fails to compile without.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<MechaClient>();
};

impl MechaClient {
    /// Wraps a connected client.
    pub(crate) fn new(client: mecha_client::blocking::Client) -> Self {
        Self {
            inner: RwLock::new(client),
        }
    }

    /// Shared access for a call. A lock poisoned by a panic caught in an
    /// earlier call is still usable: see [`entry`].
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, mecha_client::blocking::Client> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exclusive access, to change the client's settings.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, mecha_client::blocking::Client> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The client behind a `mecha_client *` argument.
///
/// # Safety
/// `ptr` must be NULL or a pointer returned by `mecha_connect` and not yet
/// passed to `mecha_close`, for as long as the returned reference is used.
pub(crate) unsafe fn client<'a>(ptr: *mut MechaClient) -> Result<&'a MechaClient, Failure> {
    // SAFETY: per this function's contract a non-NULL `ptr` points to a live
    // `MechaClient` made by `Box::into_raw` in `mecha_connect`; only shared
    // references are made from it, and `MechaClient` is `Sync`.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid("argument `client` is NULL"))
}

/// A required string argument.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that stays valid
/// and unchanged for `'a`.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from this function's contract.
    unsafe { optional_text(ptr, what) }?
        .ok_or_else(|| Failure::invalid(format!("argument `{what}` is NULL")))
}

/// An optional string argument: NULL gives `None`.
///
/// # Safety
/// As for [`text`].
pub(crate) unsafe fn optional_text<'a>(
    ptr: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: `ptr` is not NULL, and the caller guarantees it points to a
    // NUL-terminated string valid and unchanged for `'a`.
    let raw = unsafe { CStr::from_ptr(ptr) };
    raw.to_str()
        .map(Some)
        .map_err(|e| Failure::invalid(format!("argument `{what}` is not valid UTF-8: {e}")))
}

/// The `store` argument: NULL and "" both select the default store.
///
/// # Safety
/// As for [`text`].
pub(crate) unsafe fn store<'a>(ptr: *const c_char) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from this function's contract.
    Ok(unsafe { optional_text(ptr, "store") }?.unwrap_or(""))
}

/// A byte buffer argument: `ptr` may be NULL only when `len` is 0.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of `len` bytes, unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!(
            "argument `{what}` is NULL but its length is {len}"
        )));
    }
    // `from_raw_parts` requires the length to fit in an isize; no real
    // buffer is larger, so a bigger one is a caller's mistake.
    if isize::try_from(len).is_err() {
        return Err(Failure::invalid(format!(
            "argument `{what}` has an impossible length {len}"
        )));
    }
    // SAFETY: `ptr` is non-NULL and, per the contract, valid for reads of
    // `len` bytes for `'a`; `u8` has no alignment or validity requirement;
    // `len` fits in an isize (checked above).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A list of (name, value) pairs given as `2 * count` strings, name then
/// value for each pair; `ptr` may be NULL only when `count` is 0.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of `2 * count` pointers, each a
/// NUL-terminated string, all unchanged during the call.
pub(crate) unsafe fn pairs(
    ptr: *const *const c_char,
    count: usize,
    what: &str,
) -> Result<Vec<(String, String)>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!(
            "argument `{what}` is NULL but its count is {count}"
        )));
    }
    let len = count
        .checked_mul(2)
        .filter(|n| isize::try_from(*n).is_ok())
        .ok_or_else(|| {
            Failure::invalid(format!("argument `{what}` has an impossible count {count}"))
        })?;
    // SAFETY: `ptr` is non-NULL and, per the contract, valid for reads of
    // `2 * count` pointers; the length fits in an isize (checked above).
    let items = unsafe { std::slice::from_raw_parts(ptr, len) };
    items
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            // SAFETY: each pointer is a C string (or NULL, which `text`
            // refuses), per the contract.
            let (name, value) = unsafe {
                (
                    text(pair[0], &format!("{what}[{}]", 2 * i))?,
                    text(pair[1], &format!("{what}[{}]", 2 * i + 1))?,
                )
            };
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The value an out parameter holds after a failed call.
pub(crate) trait Empty: Copy {
    /// NULL for pointers, 0 for numbers.
    const EMPTY: Self;
}

impl<T> Empty for *mut T {
    const EMPTY: Self = ptr::null_mut();
}
impl Empty for usize {
    const EMPTY: Self = 0;
}
impl Empty for u64 {
    const EMPTY: Self = 0;
}
impl Empty for c_int {
    const EMPTY: Self = 0;
}

/// An out parameter: where C asked for a result to be written. Making one
/// resets the place to [`Empty::EMPTY`] at once, so that whatever fails later
/// leaves NULL/0 behind and nothing for the caller to free.
pub(crate) struct Out<T: Empty>(*mut T);

impl<T: Empty> Out<T> {
    /// Takes (and resets) the out parameter `ptr`; NULL is kept as "not
    /// wanted" until [`required`](Self::required) refuses it.
    ///
    /// # Safety
    /// `ptr` must be NULL or valid for writes of a `T` (aligned) until the
    /// entry point returns.
    pub(crate) unsafe fn new(ptr: *mut T) -> Self {
        if !ptr.is_null() {
            // SAFETY: non-NULL and valid for writes, per the contract. The
            // place may hold garbage; `write` does not read or drop it.
            unsafe { ptr.write(T::EMPTY) };
        }
        Self(ptr)
    }

    /// Fails with MECHA_ERR_INVALID when the caller passed NULL for a result
    /// that is not optional.
    pub(crate) fn required(self, what: &str) -> Result<Self, Failure> {
        if self.0.is_null() {
            Err(Failure::invalid(format!("argument `{what}` is NULL")))
        } else {
            Ok(self)
        }
    }

    /// Whether the caller wants this result (the pointer is not NULL).
    pub(crate) fn wanted(&self) -> bool {
        !self.0.is_null()
    }

    /// Writes the result; does nothing for an optional parameter given as NULL.
    pub(crate) fn put(&self, value: T) {
        if !self.0.is_null() {
            // SAFETY: non-NULL and valid for writes of a `T` until the entry
            // point returns, per the contract of `new`.
            unsafe { self.0.write(value) };
        }
    }
}

/// A buffer from `malloc`, handed to C (which frees it with `mecha_free`) or
/// freed here if the call fails before handing it over. `malloc` rather than
/// Rust's allocator, because `mecha_free` gets only the pointer, not the size
/// Rust's `dealloc` needs.
pub(crate) struct CBuf(NonNull<u8>);

impl CBuf {
    /// `size` bytes, uninitialised.
    fn alloc(size: usize) -> Result<Self, Failure> {
        // SAFETY: malloc may be called with any size; 0 is avoided so that a
        // NULL result always means failure.
        let raw = unsafe { libc::malloc(size.max(1)) };
        NonNull::new(raw.cast::<u8>())
            .map(CBuf)
            .ok_or_else(|| Failure::new(Code::ErrNomem, format!("cannot allocate {size} bytes")))
    }

    /// A copy of `data` followed by a NUL byte (not part of the data), so a
    /// text value can be used as a C string directly.
    pub(crate) fn bytes(data: &[u8]) -> Result<Self, Failure> {
        let size = data
            .len()
            .checked_add(1)
            .ok_or_else(|| Failure::new(Code::ErrNomem, "value too large"))?;
        let buf = Self::alloc(size)?;
        // SAFETY: `buf` holds `size` = len + 1 writable bytes, and a fresh
        // allocation cannot overlap `data`.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), buf.0.as_ptr(), data.len());
            buf.0.as_ptr().add(data.len()).write(0);
        }
        Ok(buf)
    }

    /// `s` as a C string. A NUL inside would silently cut it short in C, so
    /// such a string is refused rather than returned truncated.
    pub(crate) fn text(s: &str, what: &str) -> Result<Self, Failure> {
        check_no_nul(s, what)?;
        Self::bytes(s.as_bytes())
    }

    /// A NULL-terminated array of C strings in one allocation: the pointers
    /// first, then the strings they point to (as glibc's
    /// `backtrace_symbols` does), so one `mecha_free` releases everything.
    pub(crate) fn text_array(items: &[&str], what: &str) -> Result<Self, Failure> {
        let too_large = || Failure::new(Code::ErrNomem, format!("{what} too large"));
        let slots = items.len().checked_add(1).ok_or_else(too_large)?;
        let table = slots
            .checked_mul(std::mem::size_of::<*mut c_char>())
            .ok_or_else(too_large)?;
        let mut size = table;
        for item in items {
            check_no_nul(item, what)?;
            size = size
                .checked_add(item.len())
                .and_then(|s| s.checked_add(1))
                .ok_or_else(too_large)?;
        }
        let buf = Self::alloc(size)?;
        let base = buf.0.as_ptr();
        let slots_ptr = base.cast::<*mut c_char>();
        let mut offset = table;
        for (i, item) in items.iter().enumerate() {
            // SAFETY: malloc's result is aligned for any pointer type; slot
            // `i` < `slots` lies inside the table at the start of the buffer;
            // the string bytes go to [offset, offset + len + 1), which lies
            // inside the buffer because `size` counted every string and its
            // NUL after the table; the source cannot overlap a fresh buffer.
            unsafe {
                let dst = base.add(offset);
                ptr::copy_nonoverlapping(item.as_ptr(), dst, item.len());
                dst.add(item.len()).write(0);
                slots_ptr.add(i).write(dst.cast::<c_char>());
            }
            offset += item.len() + 1;
        }
        // SAFETY: the last slot, index `items.len()`, is inside the table.
        unsafe { slots_ptr.add(items.len()).write(ptr::null_mut()) };
        Ok(buf)
    }

    /// Hands the buffer to C; from now on C owns it.
    pub(crate) fn into_raw<T>(self) -> *mut T {
        let raw = self.0.as_ptr().cast::<T>();
        std::mem::forget(self);
        raw
    }
}

impl Drop for CBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `libc::malloc` and was not handed to
        // C (`into_raw` forgets `self`), so it is freed exactly once.
        unsafe { libc::free(self.0.as_ptr().cast::<c_void>()) };
    }
}

/// Refuses a text result holding a NUL byte (see [`CBuf::text`]).
fn check_no_nul(s: &str, what: &str) -> Outcome {
    if s.as_bytes().contains(&0) {
        return Err(Failure::invalid(format!(
            "the {what} contains a NUL byte and cannot be returned as a C string"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_hold_pointers_then_strings_and_end_with_null() {
        let buf = CBuf::text_array(&["a", "", "xyz"], "test").expect("allocates");
        let table: *mut *mut c_char = buf.into_raw();
        // SAFETY: `table` is the array just built: 4 slots, the first three
        // pointing to NUL-terminated strings inside the same allocation.
        unsafe {
            let read = |i: usize| CStr::from_ptr(*table.add(i)).to_str().ok();
            assert_eq!(read(0), Some("a"));
            assert_eq!(read(1), Some(""));
            assert_eq!(read(2), Some("xyz"));
            assert!((*table.add(3)).is_null());
            libc::free(table.cast());
        }
    }

    #[test]
    fn text_with_a_nul_is_refused_and_bytes_get_a_terminator() {
        let err = CBuf::text("a\0b", "value").err().expect("refused");
        assert_eq!(err.code, Code::ErrInvalid);
        let buf: *mut u8 = CBuf::bytes(b"hi").expect("allocates").into_raw();
        // SAFETY: three bytes were written: 'h', 'i', NUL.
        unsafe {
            assert_eq!(std::slice::from_raw_parts(buf, 3), b"hi\0");
            libc::free(buf.cast());
        }
    }

    #[test]
    fn panics_become_err_panic_with_a_message() {
        let code = entry(|| panic!("boom"));
        assert_eq!(code, Code::ErrPanic);
        // SAFETY: the pointer is this thread's last error, a C string.
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) };
        assert!(msg.to_string_lossy().contains("boom"));
        assert_eq!(entry(|| Ok(())), Code::Ok);
        // SAFETY: as above.
        assert!(unsafe { CStr::from_ptr(last_error_ptr()) }.is_empty());
    }
}
