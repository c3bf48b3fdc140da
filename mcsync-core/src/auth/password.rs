//! Password hashing: argon2 with wiped memory, at most a few checks at once.

use crate::sync::Locked;
use crate::{Error, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most password checks (argon2 runs: about 19 MiB and a few tens of milliseconds of one
/// core each with the default parameters) that [`UsersFile`] runs at once in this process;
/// more wait in line, first come first served.
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Longest wait in line for a password check; a login still waiting then is answered
/// [`Refusal::Busy`] ("publisher busy"). Shorter than a subscriber's control I/O time-out
/// (10 s), so the client hears why.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// A counting semaphore that lets its waiters through in the order they came.
#[derive(Debug)]
pub(super) struct HashGate {
    permits: usize,
    pub(super) state: Mutex<GateState>,
    turn: Condvar,
}

#[derive(Debug)]
pub(super) struct GateState {
    pub(super) running: usize,
    pub(super) next_ticket: u64,
    pub(super) queue: VecDeque<u64>,
}

/// A place in a [`HashGate`]; gives it back when dropped.
#[derive(Debug)]
pub(super) struct HashPermit<'a>(&'a HashGate);

impl HashGate {
    pub(super) const fn new(permits: usize) -> HashGate {
        HashGate {
            permits,
            state: Mutex::new(GateState {
                running: 0,
                next_ticket: 0,
                queue: VecDeque::new(),
            }),
            turn: Condvar::new(),
        }
    }

    /// Waits up to `wait` for a place, behind everyone who asked before.
    pub(super) fn acquire(&self, wait: Duration) -> Option<HashPermit<'_>> {
        let deadline = Instant::now() + wait;
        let mut st = self.state.locked();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            if st.queue.front() == Some(&ticket) && st.running < self.permits {
                st.queue.pop_front();
                st.running += 1;
                // The next in line may fit too.
                self.turn.notify_all();
                return Some(HashPermit(self));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.queue.retain(|&t| t != ticket);
                // If this one was at the front, the next may go now.
                self.turn.notify_all();
                return None;
            }
            st = self
                .turn
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for HashPermit<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.locked();
        st.running -= 1;
        self.0.turn.notify_all();
    }
}

/// The process's password checks (every [`UsersFile`] shares it: the memory is the
/// process's).
pub(super) static HASHING: HashGate = HashGate::new(MAX_CONCURRENT_HASHES);

/// Verifies `password` against a PHC `hash` as argon2's `verify_password` does (with the
/// algorithm, version, parameters and salt the hash names; constant-time comparison), but
/// with its work memory mapped for this one check and unmapped after it. Through the heap,
/// each connection thread's malloc arena would keep a freed 19 MiB area resident: a few
/// hundred megabytes over many threads, though only [`MAX_CONCURRENT_HASHES`] run at once.
pub(super) fn verify(password: &[u8], hash: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(hash),
        argon2::Algorithm::try_from(hash.algorithm),
    ) else {
        return false;
    };
    let Ok(version) = hash.version.map(argon2::Version::try_from).transpose() else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let Some(memory) = BlockMemory::new(params.block_count()) else {
        return false;
    };
    let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password, salt, &mut out, memory)
        .is_ok()
        // `Output` compares in constant time.
        && Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// Zero-filled argon2 work memory in an anonymous mapping of its own, returned to the
/// system when dropped.
pub(super) struct BlockMemory {
    ptr: std::ptr::NonNull<argon2::Block>,
    len: usize,
}

impl BlockMemory {
    fn new(len: usize) -> Option<BlockMemory> {
        let bytes = len.checked_mul(std::mem::size_of::<argon2::Block>())?;
        if bytes == 0 {
            return None;
        }
        // SAFETY: an anonymous private mapping (no file, no fixed address); failure is
        // checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let ptr = std::ptr::NonNull::new(p.cast::<argon2::Block>())?;
        Some(BlockMemory { ptr, len })
    }
}

impl AsMut<[argon2::Block]> for BlockMemory {
    fn as_mut(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping holds `len` blocks, is page-aligned (more than a block's 64
        // bytes), zero-filled (a valid block is any 128 u64s), and exclusively ours while
        // `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for BlockMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, of exactly this size, unmapped once.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<argon2::Block>(),
            );
        }
    }
}

/// Hashes a password with argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Config(format!("hashing password: {e}")))
}
